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

import bitfit_utils as bu
from bitfit_utils import parameter_groups
from lab import families
from lab.data import LABEL_NAMES

families.register()  # other architectures' bias roles, for apply_bitfit and the group tables


def plot_history(history, title: str = "Training curves", kept_epoch: float | None = None,
                 majority: float | None = None):
    """Loss and scores per epoch, from ``history_frame``.

    With a single eval set (``eval_loss``, ``eval_accuracy``, ...): loss and dev accuracy/F1.
    With the lab's two sets (``eval_validation_*``, ``eval_dev_*``): loss, accuracy and F1 of
    both, and validation MCC, the measure that picks the epoch.

    Args:
        kept_epoch: the epoch the model holds after training (``kept_epoch(trainer)``): a vertical line.
        majority: accuracy (a fraction) of predicting the majority class everywhere: a horizontal line.
    """
    import matplotlib.pyplot as plt

    sets = [s for s in ("validation", "dev") if f"eval_{s}_loss" in history] or [""]
    prefix = {s: f"eval_{s}_" if s else "eval_" for s in sets}
    panels = 3 if "eval_validation_mcc" in history else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5))
    axes[0].plot(history.index, history["train_loss"], "o-", label="train")
    for s in sets:
        if f"{prefix[s]}loss" in history:
            axes[0].plot(history.index, history[f"{prefix[s]}loss"], "s--", label=s or "dev")
    axes[0].set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy loss (nats)")
    for s in sets:
        for key, label in (("accuracy", "accuracy"), ("f1", "F1")):
            if f"{prefix[s]}{key}" in history:
                axes[1].plot(history.index, 100 * history[f"{prefix[s]}{key}"], "o-" if key == "accuracy" else "^:",
                             label=f"{s or 'dev'} {label}")
    if majority is not None:
        axes[1].axhline(100 * majority, color="grey", linewidth=1, linestyle=":", label="majority class")
    axes[1].set(title=f"{title}: accuracy and F1", xlabel="epoch", ylabel="score (%)")
    if panels == 3:
        axes[2].plot(history.index, history["eval_validation_mcc"], "o-", color="tab:purple")
        axes[2].axhline(0, color="grey", linewidth=1, linestyle=":")
        axes[2].set(title="validation MCC (picks the epoch)", xlabel="epoch", ylabel="MCC")
    for ax in axes:
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="black", linewidth=1, alpha=0.4, label="kept epoch" if ax is axes[0] else None)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def read_history(history, kept_epoch: float) -> str:
    """``history_frame``'s table of the lab's two eval sets, read out in three lines (true for any run)."""
    stuck = [f"{epoch:g}" for epoch, mcc in history["eval_validation_mcc"].items() if mcc == 0]
    return "\n".join([
        "Epochs with validation MCC 0 (one answer for every pair): " + (", ".join(stuck) or "none"),
        f"Train loss {history['train_loss'].iloc[0]:.3f} after epoch 1, {history['train_loss'].iloc[-1]:.3f} after the "
        f"last; validation loss lowest at epoch {history['eval_validation_loss'].idxmin():g}, dev loss lowest at epoch "
        f"{history['eval_dev_loss'].idxmin():g}.",
        f"Validation MCC highest at epoch {kept_epoch:g}: the model keeps that epoch's biases and head."])


def plot_comparison(table, majority: float, title: str):
    """Dev accuracy and F1 per method (02's section 6), with the accuracy of always answering the majority class."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    table[["dev_accuracy", "dev_f1"]].plot.bar(ax=ax, rot=0)
    ax.axhline(100 * majority, color="grey", linestyle=":", linewidth=1, label="majority class: accuracy")
    ax.set(title=title, xlabel="method", ylabel="score (%)", ylim=(50, 100))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_seeds(seeds: dict[str, list[float]], this_run: dict[str, float], majority: float, title: str,
               source: str = "the study"):
    """Dev accuracy per method: every seed of ``source`` a dot beside their mean (a bar), this run a red star.

    Args:
        seeds: method name -> dev accuracy (%) of each of the study's reported seeds (``study_seeds``).
        this_run: method name -> this run's dev accuracy (%).
        majority: accuracy (a fraction) of always answering the majority class: a dotted line.
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys([*seeds, *this_run]))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.4))
    for i, name in enumerate(names):
        if seeds.get(name):
            ax.bar(i, sum(seeds[name]) / len(seeds[name]), width=0.6, color="#cfd8e3",
                   label=f"{source}: mean over seeds" if i == 0 else None)
            ax.scatter([i - 0.12] * len(seeds[name]), seeds[name], s=18, color="#1f4e79", zorder=3,
                       label=f"{source}: one seed" if i == 0 else None)
        if name in this_run:
            ax.scatter([i + 0.12], [this_run[name]], marker="*", s=160, color="tab:red", zorder=4,
                       label="this run" if name == next(iter(this_run)) else None)
    ax.axhline(100 * majority, color="grey", linestyle=":", linewidth=1, label="majority class")
    ax.set_xticks(range(len(names)), names)
    ax.set(title=title, ylabel="dev accuracy (%)", ylim=(50, 100))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def predictions_frame(pairs, probs, true=None, label_names=LABEL_NAMES):
    """A table of sentence pairs with the model's label and p(equivalent); ``true`` labels (0/1) add a column."""
    import pandas as pd

    probs = np.asarray(probs)
    table = pd.DataFrame({"sentence1": [a for a, _ in pairs], "sentence2": [b for _, b in pairs],
                          "prediction": [label_names[i] for i in probs.argmax(1)],
                          "p(equivalent)": probs[:, 1].round(3)})
    if true is not None:
        table.insert(2, "true", [label_names[y] for y in true])
    return table


def plot_confusion(y_true, probs, title: str, label_names=LABEL_NAMES):
    """scikit-learn's confusion matrix of the predicted labels (the most probable class)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    shown = ConfusionMatrixDisplay.from_predictions(y_true, np.asarray(probs).argmax(1), display_labels=label_names,
                                                    colorbar=False)
    shown.ax_.set(title=title, xlabel="predicted label", ylabel="true label")
    return shown.ax_


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
    base = dict(base_model.named_parameters())
    tuned = dict(tuned_model.named_parameters())
    groups = parameter_groups(tuned_model)
    names = [n for n, g in groups.items() if g in bu.BIAS_GROUPS]
    for name in names:
        if name not in base or base[name].shape != tuned[name].shape:
            raise ValueError(f"'{name}' is missing or differs in shape in the base model: compare the same architecture.")
    return bias_changes_from_tensors({n: base[n] for n in names}, {n: tuned[n] for n in names}, groups)


def bias_changes_from_tensors(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                              groups: dict[str, str]):
    """:func:`bias_changes` from bias tensors rather than models (a pack's tensors against the base's).

    Args:
        base: the base model's biases by parameter name.
        tuned: the tuned biases by name (e.g. a pack's tensors; names not in ``groups``' bias groups,
            such as the head, are ignored).
        groups: parameter name -> group (``parameter_groups`` of the model).

    Returns:
        The DataFrame :func:`bias_changes` returns.

    Raises:
        ValueError: a bias of ``tuned`` that ``base`` lacks or has in another shape.
    """
    import pandas as pd

    diffs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, group in groups.items():
        if group not in bu.BIAS_GROUPS or name not in tuned:
            continue
        if name not in base or base[name].shape != tuned[name].shape:
            raise ValueError(f"'{name}' is missing or differs in shape in the base model: compare the same architecture.")
        layer = _layer_label(name) or group.split("_")[0]
        diff = (base[name].detach().float().cpu() - tuned[name].detach().float().cpu()).abs().flatten()
        diffs.setdefault(layer, {}).setdefault(group, []).append(diff)
    rows = {layer: {g: torch.cat(d).mean().item() for g, d in cells.items()} for layer, cells in diffs.items()}
    order = sorted(rows, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else k))
    columns = [g for g in bu.BIAS_GROUPS if any(g in r for r in rows.values())]
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


def interleaved_latency(models: dict[str, nn.Module], inputs: dict, rounds: int = 7) -> dict[str, float]:
    """Median forward-pass time in ms of each model on the same ``inputs``, the models timed in turns.

    Each round times every model once (a median of 5 calls after 1 warm-up), so a machine that speeds
    up or slows down during the measurement affects all models alike; the result is the median round.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(rounds):
            for name, model in models.items():
                model.eval()
                times[name].append(median_latency(lambda: model(**inputs), repeats=5, warmup=1))
    return {name: float(np.median(values)) for name, values in times.items()}


def switch_packs(model: nn.Module, tokenizer, pack_paths, probe_pairs) -> dict:
    """Load each pack in ``pack_paths`` in turn into the same ``model`` and time every load.

    Before the first load the model's probabilities on ``probe_pairs`` are taken; after the last load
    they are taken again. Returns ``ms`` (each pack's load times in ms, in order), ``restored`` (every
    tensor of the last pack bit for bit equal to the model's) and ``same_probabilities`` (the probe's
    probabilities unchanged: true when the last pack is the one the model held before).
    """
    from lab import packs
    from lab.models import predict

    _, before = predict(model, tokenizer, probe_pairs)
    ms: dict[str, list[float]] = {}
    for path in pack_paths:
        start = time.perf_counter()
        packs.load_bias_checkpoint(model, path)
        ms.setdefault(Path(path).name, []).append(1000 * (time.perf_counter() - start))
    _, after = predict(model, tokenizer, probe_pairs)
    tensors, _ = packs.read_bias_checkpoint(pack_paths[-1])
    params = dict(model.named_parameters())
    restored = all(torch.equal(params[name].detach().cpu(), tensor) for name, tensor in tensors.items())
    return {"ms": ms, "restored": restored, "same_probabilities": bool(np.array_equal(before, after))}


def requests_frame(requests, answers, switched=None):
    """A table of mixed-task requests and their answers (``MultiTaskBitFit.predict``): task, text, label, p(label).

    Args:
        requests: ``(task, text)`` or ``(task, (text_a, text_b))`` pairs.
        answers: ``MultiTaskBitFit.predict``'s answers, one per request.
        switched: the same requests answered one at a time after ``switch`` (optional;
            ``MultiTaskBitFit.predict_switching``'s answers or their probabilities): adds the largest
            difference per request.
    """
    import pandas as pd

    text = lambda t: t if isinstance(t, str) else f"{t[0]} || {t[1]}"  # noqa: E731
    table = pd.DataFrame({"task": [task for task, _ in requests], "request": [text(t) for _, t in requests],
                          "answer": [a["label"] for a in answers],
                          "p(answer)": [round(max(a["probs"]), 3) for a in answers]})
    if switched is not None:
        probs = [s["probs"] if isinstance(s, dict) else s for s in switched]
        table["|Δp| vs switching"] = [float(np.abs(np.asarray(a["probs"]) - np.asarray(s)).max())
                                      for a, s in zip(answers, probs)]
    return table
