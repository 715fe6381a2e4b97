"""Helpers the study and the benchmarks share: peak memory, the random-mask baseline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import bitfit_utils as bu


def peak_rss(reset: bool = False) -> int:
    """Peak resident memory of this process in bytes (Linux: VmHWM; elsewhere ru_maxrss).

    ``resource``'s ru_maxrss survives ``exec`` on Linux, so a child process started by
    a big parent would report the parent's peak; VmHWM belongs to this process alone.

    Args:
        reset: on Linux, restart the high-water mark at the current RSS (so a later
            call measures only what happens after this one).
    """
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # Unix only
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


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
