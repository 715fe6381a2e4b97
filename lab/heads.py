"""How the task head reads the encoder: the [CLS] state through the pooler, or the mean over the tokens.

A BERT-style classifier reads ``pooler(h_[CLS]) = tanh(W h_[CLS] + b)``. The pooler was trained by
BERT's next-sentence objective; a sentence-embedding checkpoint such as the offline MiniLM never
trained it (its bias is exactly 0, its matrix is a random draw), so every method that freezes it
reads the encoder through a random projection. ``"mean"`` replaces the pooler with the masked mean
of the last hidden states, the pooling such a checkpoint was trained with; it adds no parameter.
"""

from __future__ import annotations

import torch
from torch import nn

#: The heads a model can be given: ``"cls"`` (the architecture's own pooler) or ``"mean"``.
POOLINGS = ("cls", "mean")


class MaskedMeanPooler(nn.Module):
    """The mean of the token states where ``attention_mask`` is 1 (padding excluded).

    The backbone calls a pooler with the hidden states only; :func:`set_pooling` hands this module
    the attention mask of the same call through a forward pre-hook on the backbone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask
        if mask is None or mask.shape != hidden_states.shape[:2]:
            mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
        weights = mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _keep_mask(pooler: MaskedMeanPooler):
    def hook(module, args, kwargs):
        pooler.attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    return hook


def set_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Give a ``...ForSequenceClassification`` model the head ``pooling`` reads through; return the model.

    Args:
        model: a model whose backbone (``model.base_model``) has a ``pooler`` (BERT, MiniLM, ELECTRA-style
            heads without one are refused for ``"mean"``).
        pooling: ``"cls"`` leaves the model as loaded; ``"mean"`` swaps the pooler for
            :class:`MaskedMeanPooler` (the pooler's weights leave the model). Recorded as
            ``model.config.lab_pooling`` so that a saved pack says which head it was trained with.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: use one of {POOLINGS}.")
    backbone = model.base_model
    current = getattr(model.config, "lab_pooling", "cls")
    if pooling == current:
        return model
    if pooling == "cls":
        raise ValueError("This model already reads the mean of its tokens; load it again for the [CLS] head.")
    if getattr(backbone, "pooler", None) is None:
        raise ValueError(f"{type(model).__name__} has no pooler to replace; its head already reads its own way.")
    pooler = MaskedMeanPooler()
    backbone.pooler = pooler
    backbone.register_forward_pre_hook(_keep_mask(pooler), with_kwargs=True)
    model.config.lab_pooling = pooling
    return model


def pooler_was_trained(model: nn.Module) -> bool:
    """Whether the backbone's pooler looks trained: a checkpoint that never trained it keeps its bias at 0."""
    pooler = getattr(model.base_model, "pooler", None)
    dense = getattr(pooler, "dense", None)
    if dense is None or dense.bias is None:
        return False
    return bool(dense.bias.detach().abs().max() > 0)
