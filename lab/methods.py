"""The methods the lab compares with BitFit: the frozen and full baselines, LoRA and BEFT (peft)."""

from __future__ import annotations

import warnings
from typing import Sequence

from torch import nn

from bitfit_utils import apply_bitfit, count_parameters, parameter_groups


def setup_method(model: nn.Module, method: str) -> tuple[int, int]:
    """Set ``requires_grad`` for one of the lab's three baselines.

    Args:
        method: ``"frozen"`` (only the task head), ``"bitfit"`` (all bias groups
            and the head) or ``"full"`` (every parameter).

    Returns:
        ``(trainable, total)`` after the change.
    """
    if method == "bitfit":
        apply_bitfit(model)
    elif method in ("frozen", "full"):
        group_of = parameter_groups(model)
        for name, param in model.named_parameters():
            param.requires_grad = method == "full" or group_of[name] == "head"
        model.bitfit_bias_terms = [] if method == "frozen" else ["all parameters"]
    else:
        raise ValueError(f"Unknown method {method!r}: use 'frozen', 'bitfit' or 'full'.")
    return count_parameters(model)


def get_peft_model_quietly(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without the FutureWarning it triggers in transformers 5 (not the student's concern)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)

#: BEFT on every attention and FFN Linear layer of a BERT-family encoder (peft matches a
#: name or a dotted suffix, so "output.dense" alone would also catch "attention.output.dense").
BEFT_BERT_ALL_LINEAR: tuple[str, ...] = (
    "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense",
)


def apply_beft(model: nn.Module, target_modules: Sequence[str] | None = None) -> nn.Module:
    """Wrap a sequence classifier with peft's BEFT: a new zero bias vector on each target Linear.

    BEFT adds a trainable vector ``b'`` (initialised to zero) to the output of each target
    layer, ``y = W x + b + b'``, and freezes everything else but the task head. ``b'`` sits
    exactly where the layer's own bias does, so its gradient is the bias gradient: BEFT on
    a set of layers trains what BitFit trains on their biases, as separate tensors (the
    layer's own bias stays frozen, and layers built without a bias get one in effect).

    Args:
        model: a ``...ForSequenceClassification`` model.
        target_modules: module names (or dotted suffixes) to give a BEFT vector. ``None``:
            peft's default for the architecture (BERT, RoBERTa: ``value``; Llama, Qwen2:
            ``v_proj``; T5: ``v``). ``BEFT_BERT_ALL_LINEAR``: every attention and FFN Linear
            layer of a BERT-family encoder (query, key, value, attention.output.dense,
            intermediate.dense, output.dense).

    Returns:
        The ``PeftModel``; its BEFT vectors form the ``"beft"`` group of ``parameter_groups``.
    """
    from peft import BeftConfig, TaskType

    targets = list(target_modules) if target_modules is not None else None
    return get_peft_model_quietly(model, BeftConfig(task_type=TaskType.SEQ_CLS, target_modules=targets))


def apply_lora(model: nn.Module, r: int = 8, bias: str = "none") -> nn.Module:
    """Wrap a sequence classifier with LoRA on ``query`` and ``value`` (peft).

    ``task_type=SEQ_CLS`` keeps the task head trainable. ``bias="all"`` is the
    correct way to add BitFit to LoRA: ``get_peft_model`` freezes every
    parameter that is not a LoRA matrix, except the biases when ``bias="all"``.

    Args:
        model: a ``...ForSequenceClassification`` model.
        r: LoRA rank (``lora_alpha = 2 * r``, dropout 0.1).
        bias: ``"none"`` (LoRA alone) or ``"all"`` (LoRA + every bias: BitFit + LoRA).

    Returns:
        The ``PeftModel``; train it like any model.
    """
    from peft import LoraConfig, TaskType

    if bias not in ("none", "all"):
        raise ValueError(f"bias must be 'none' (LoRA alone) or 'all' (BitFit + LoRA), got {bias!r}")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, lora_dropout=0.1,
                        target_modules=["query", "value"], bias=bias)
    return get_peft_model_quietly(model, config)
