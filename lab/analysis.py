"""Looking at results: training curves, how far each bias moved, sizes and latency."""

from __future__ import annotations

import os
import tempfile
import time
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitfit_utils import BIAS_GROUPS, parameter_groups


def plot_history(history, title: str = "Training curves"):
    """Training loss and dev accuracy/F1 per epoch, side by side."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(history.index, history["train_loss"], "o-", label="train")
    if "eval_loss" in history:
        ax1.plot(history.index, history["eval_loss"], "s--", label="dev")
    ax1.set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy loss (nats)")
    ax1.legend()
    for key, label in (("eval_accuracy", "accuracy"), ("eval_f1", "F1")):
        ax2.plot(history.index, 100 * history[key], "o-", label=label)
    ax2.set(title=f"{title}: dev metrics", xlabel="epoch", ylabel="score (%)")
    ax2.legend()
    fig.tight_layout()
    return fig


def _layer_label(name: str) -> str | None:
    """The layer a parameter belongs to: ``"3"``, ``"decoder.3"`` in a decoder, None outside the layers."""
    match = re.search(r"\.(\d+)\.", name)
    if match is None:
        return None
    return ("decoder." if "decoder" in name[: match.start()].split(".") else "") + match.group(1)


def bias_changes(base_model: nn.Module, tuned_model: nn.Module):
    """The paper's change measure per layer and bias group: ``(1/dim) * ||b0 - bF||_1``.

    Several biases of one group in one layer (T5's cross-attention q, k, v, o) count as
    one vector.

    Returns:
        A DataFrame, one row per encoder layer (plus ``embeddings``/``pooler``
        rows for those groups), one column per bias group.
    """
    import pandas as pd

    base = dict(base_model.named_parameters())
    diffs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, group in parameter_groups(tuned_model).items():
        if group not in BIAS_GROUPS:
            continue
        tuned = dict(tuned_model.named_parameters())[name]
        if name not in base or base[name].shape != tuned.shape:
            raise ValueError(f"'{name}' is missing or differs in shape in the base model: compare the same architecture.")
        layer = _layer_label(name) or group.split("_")[0]
        diff = (base[name].detach().float().cpu() - tuned.detach().float().cpu()).abs().flatten()
        diffs.setdefault(layer, {}).setdefault(group, []).append(diff)
    rows = {layer: {g: torch.cat(d).mean().item() for g, d in cells.items()} for layer, cells in diffs.items()}
    order = sorted(rows, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else k))
    columns = [g for g in BIAS_GROUPS if any(g in r for r in rows.values())]
    return pd.DataFrame([rows[k] for k in order], index=order, columns=columns).rename_axis("layer")


def plot_bias_changes(changes, title: str = "Bias change per layer and group"):
    """Draw ``bias_changes`` as a heatmap (blank cells: group absent in that row)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * changes.shape[1], 0.9 + 0.42 * changes.shape[0]))
    image = ax.imshow(changes.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(changes.shape[1]), changes.columns, rotation=45, ha="right")
    ax.set_yticks(range(changes.shape[0]), changes.index)
    ax.set(title=title, xlabel="bias group", ylabel="layer")
    fig.colorbar(image, ax=ax, label="mean |b0 - bF| per entry")
    fig.tight_layout()
    return fig


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file in megabytes (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


def full_model_size_mb(model) -> float:
    """Size of the whole model saved with ``save_pretrained`` (safetensors), in MB."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Writing model shards" bar in notebook and benchmark outputs
    try:
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            return sum(f.stat().st_size for f in Path(folder).iterdir()) / 1e6
    finally:
        if shown:
            logging.enable_progress_bar()


def median_latency(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))
