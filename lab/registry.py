"""The registry of methods: how each sets a model up, what its checkpoint holds, how it is tuned.

One entry per method, the only one: the study's runners and reports (``study/``), the benchmarks,
the notebooks (``lab.study``) and the tests all read ``METHODS``. A headline method has a
learning-rate grid (three rates about 3x apart, centred on the usual rate for its kind of
parameters); an ablation changes one thing of its ``parent`` and uses the parent's chosen rate.
The random baseline's masks (:func:`random_parameter_mask`, :func:`mask_gradients`) live here too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import bitfit_utils as bu
from lab import packs
from lab.handout import HandoutBitFitLoRA, handout_adaptive_bias_initialization
from lab.methods import BEFT_BERT_ALL_LINEAR, apply_beft, apply_lora, setup_method


@dataclass(frozen=True)
class Method:
    """One way to fine-tune, as the study tunes and stores it.

    Attributes:
        why: the reason for its grid (headline) or what it changes (ablation).
        lrs: the learning-rate grid (headline methods), one trial per rate at seed 0.
        parent: for an ablation, the headline method whose chosen rate it uses.
        seeds: reported seeds at the chosen setting (1..seeds; seed 0 only tunes).
        checkpoint: what a trained run must keep: ``"pack"`` (biases and head), ``"adapter"``
            (peft's saved adapter with the head) or ``"full"`` (the whole model).
        epochs: the most epochs a run trains where no stopping rule ends it (protocol 2's
            budget; 02's maximum).
        label: the method's name in the notebooks' tables and lines.
        default_lr: the rate 02 trains with until the study has chosen one (02's methods only).
    """

    why: str
    lrs: tuple[float, ...] = ()
    parent: str | None = None
    seeds: int = 3
    checkpoint: str = "pack"
    epochs: int = 6
    label: str = ""
    default_lr: float | None = None


METHODS: dict[str, Method] = {
    "frozen": Method("one linear layer on frozen features tolerates large rates", (1e-3, 3e-3, 1e-2),
                     label="Frozen (head only)", default_lr=1e-2),
    "bitfit": Method("the BitFit paper tunes 1e-4 to 1e-3; biases need ~20x the full-FT rate",
                     (3e-4, 1e-3, 3e-3), seeds=5, label="BitFit", default_lr=1e-3),
    "full": Method("the usual BERT grid (2e-5 to 5e-5) and one step up for a 6-layer model",
                   (2e-5, 5e-5, 1e-4), seeds=5, checkpoint="full", epochs=4, label="Full FT", default_lr=5e-5),
    "lora": Method("around the LoRA paper's 4e-4 to 5e-4 for base-size encoders (r=8 on query, value)",
                   (1e-4, 3e-4, 1e-3), seeds=5, checkpoint="adapter", label="LoRA"),
    "beft": Method("BEFT's vectors get exactly the bias gradient (tests/test_families.py): BitFit's grid",
                   (3e-4, 1e-3, 3e-3), checkpoint="adapter", label="BEFT (value)"),
    "beft_all": Method("as beft, on every attention/FFN Linear layer", (3e-4, 1e-3, 3e-3), checkpoint="adapter",
                       label="BEFT (every Linear)"),
    "bitfit_qi": Method("BitFit's rate on b_q and b_m2 (query, intermediate) only", parent="bitfit"),
    "random": Method("BitFit's rate on as many random scalars as BitFit trains", parent="bitfit", checkpoint="full"),
    "adaptive_init": Method("BitFit's rate after the handout's adaptive_bias_initialization", parent="bitfit"),
    "bitfit_lora": Method("LoRA (r=8, alpha 16, dropout 0.1, head trained) with every bias trained too "
                          "(LoraConfig(bias='all')); LoRA's rate", parent="lora", checkpoint="adapter"),
    "handout_bitfitlora": Method("the handout's class as written: LoRA r=4, alpha 8, dropout 0 on query/value, "
                                 "biases and head frozen; shares only LoRA's rate", parent="lora",
                                 checkpoint="adapter"),
}
HEADLINE = [m for m, spec in METHODS.items() if spec.parent is None]


def random_parameter_mask(model: nn.Module, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Choose ``n`` scalars of the encoder uniformly *without* replacement.

    The random baseline of the BitFit paper trains as many random scalars as
    BitFit trains biases. Returns boolean masks per parameter name; combine with
    ``mask_gradients``.
    """
    prefix = bu.encoder_prefix(model)
    params = dict(model.named_parameters())
    names = [name for name in params if not prefix or name.startswith(prefix + ".")]
    sizes = [params[name].numel() for name in names]
    total = sum(sizes)
    if not 0 < n <= total:
        raise ValueError(f"n must be in 1..{total}, got {n}")
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=gen)[:n]] = True
    masks, start = {}, 0
    for name, size in zip(names, sizes):
        chunk = flat[start : start + size]
        start += size
        if chunk.any():
            masks[name] = chunk.view_as(params[name])
    return masks


def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Train only the masked entries of the named parameters (gradient hooks).

    Unmasked parameters of the encoder are frozen; returns the hook handles.
    Use an optimizer without weight decay so untouched entries stay exactly fixed.
    """
    params = dict(model.named_parameters())
    handles = []
    for name, mask in masks.items():
        params[name].requires_grad = True
        handles.append(params[name].register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype)))
    return handles


def _random(model: nn.Module, seed: int) -> tuple[nn.Module, int]:
    bitfit_count = bu.apply_bitfit(model).trainable
    groups = bu.parameter_groups(model)
    head = [p for n, p in model.named_parameters() if groups[n] == "head"]
    head_count = sum(p.numel() for p in head)
    model.requires_grad_(False)
    masks = random_parameter_mask(model, bitfit_count - head_count, seed=seed)
    mask_gradients(model, masks)
    for p in head:
        p.requires_grad = True
    return model, sum(int(m.sum()) for m in masks.values()) + head_count


def _adaptive_init(model: nn.Module) -> nn.Module:
    bu.apply_bitfit(model)
    handout_adaptive_bias_initialization(model, "classification")
    return model


def _baseline(method: str) -> Callable[[nn.Module], nn.Module]:
    def prepare(model: nn.Module) -> nn.Module:
        setup_method(model, method)
        return model

    return prepare


#: How each method turns a freshly loaded classifier into the model to train.
_SETUP: dict[str, Callable[[nn.Module], nn.Module]] = {
    "frozen": _baseline("frozen"), "bitfit": _baseline("bitfit"), "full": _baseline("full"),
    "bitfit_qi": lambda m: (bu.apply_bitfit(m, ["query", "intermediate"]), m)[1],
    "lora": lambda m: apply_lora(m, bias="none"), "bitfit_lora": lambda m: apply_lora(m, bias="all"),
    "beft": apply_beft, "beft_all": lambda m: apply_beft(m, BEFT_BERT_ALL_LINEAR),
    "handout_bitfitlora": lambda m: HandoutBitFitLoRA(m).peft_model, "adaptive_init": _adaptive_init,
}


def setup(model: nn.Module, method: str, seed: int) -> tuple[nn.Module, int]:
    """Prepare ``model`` for ``method``; return (the model to train, its trainable scalar count)."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: the study knows {', '.join(METHODS)}.")
    if method == "random":
        return _random(model, seed)
    model = _SETUP[method](model)
    return model, bu.count_parameters(model)[0]


def checkpoint_bytes(model: nn.Module, method: str, task: str | None = None) -> int:
    """Bytes on disk of what a trained run must keep (``Method.checkpoint``).

    Args:
        model: the trained model (after ``setup``).
        method: its method in ``METHODS``.
        task: the run's task, recorded in a bias pack; None: the task the model was loaded for
            (``load_model(..., task=)`` sets ``config.finetuning_task``), else MRPC, as ``predict`` assumes.
    """
    from lab.analysis import full_model_size_mb
    from lab.models import predict_task

    kind = METHODS[method].checkpoint
    with tempfile.TemporaryDirectory() as folder:
        if kind == "adapter":
            model.save_pretrained(folder)  # the adapter only (with the head, for SEQ_CLS)
            return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        if kind == "full":
            return int(full_model_size_mb(model) * 1e6)  # a random mask touches whole tensors
        pack = packs.save_bias_checkpoint(model, Path(folder) / "p.safetensors", task=task or predict_task(model).name)
        return pack.stat().st_size
