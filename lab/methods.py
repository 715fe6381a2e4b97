"""The methods the lab compares with BitFit: the frozen and full baselines, LoRA and BEFT (peft)."""

from __future__ import annotations

import warnings
from typing import Sequence

from torch import nn

import bitfit_utils as bu
from bitfit_utils import apply_bitfit, count_parameters
from lab import families

families.register()  # other architectures' bias roles, for apply_bitfit and the group tables

#: The groups of peft's own tensors, by the prefix of their names (``lora_A``, ``beft_bias``).
ADAPTER_GROUPS: tuple[str, ...] = ("lora", "beft")


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped by peft (``get_peft_model``)."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """``bitfit_utils.parameter_groups`` for any model the lab trains, peft-wrapped ones included.

    A peft model's names are ``base_model.model.<name>``, a wrapped layer's own tensors sit
    under ``base_layer``: they get the group the unwrapped name has. peft's own tensors form
    the ``"lora"`` or ``"beft"`` group.
    """
    if not is_peft_model(model):
        return bu.parameter_groups(model)
    prefix = bu.encoder_prefix(model.get_base_model())
    modules = dict(model.named_modules())
    groups: dict[str, str] = {}
    for full_name, _ in model.named_parameters():
        if adapter := next((kind for kind in ADAPTER_GROUPS if f".{kind}_" in full_name), None):
            groups[full_name] = adapter
            continue
        name = full_name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        groups[full_name] = bu.parameter_group(name, modules[full_name.rpartition(".")[0]], prefix)
    return groups


def parameter_table(model: nn.Module):
    """``bitfit_utils.parameter_table`` with the groups of :func:`parameter_groups` (peft models too)."""
    return bu.parameter_table(model, parameter_groups(model))


def setup_method(model: nn.Module, method: str) -> tuple[int, int]:
    """Set ``requires_grad`` for one of the lab's three baselines.

    Args:
        method: ``"frozen"`` (only the task head), ``"bitfit"`` (all bias groups
            and the head) or ``"full"`` (every parameter).

    Returns:
        ``(trainable, total)`` after the change. The model gets no new attribute: a pack
        saved from it records the bias groups whose biases train (``lab.packs``).
    """
    if method == "bitfit":
        apply_bitfit(model)
    elif method in ("frozen", "full"):
        group_of = parameter_groups(model)
        for name, param in model.named_parameters():
            param.requires_grad = method == "full" or group_of[name] == "head"
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
