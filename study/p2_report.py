"""Tables and plot of protocol 2, rebuilt from its run files (``python -m study.p2_run --report``).

Writes into the results folder:

* ``runs.csv``: one row per run, at the epoch the rule keeps (validation MCC);
* ``grid.csv`` / ``grid.md``: every trial of the grid, **validation** scores only (what chose the rate);
* ``methods.csv`` / ``methods.md``: headline methods at their chosen rate, dev at the kept epoch, every seed;
* ``ablations.csv`` / ``ablations.md``: the same for the ablations;
* ``tta.csv`` / ``tta.md``: time-to-accuracy of BitFit and Full FT (runs made alone on a CPU);
* ``methods.png``: dev accuracy and F1 per method, every seed a point beside the mean.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lab.registry import HEADLINE, METHODS
from study.p2_protocol import TTA_METHODS, choose, kept, read_runs


def _cell(value, digits: int | None = None) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, float) and value != value:
        return "–"  # NaN: e.g. the std of a single seed
    if digits is not None and isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"  # a fixed number of decimals: 84.0, not 84
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return str(value)


def markdown(table, digits: dict[str, int] | None = None) -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency); ``digits`` fixes decimals per column."""
    digits = digits or {}
    lines = ["| " + " | ".join([table.index.name or "", *map(str, table.columns)]) + " |",
             "|" + "---|" * (len(table.columns) + 1)]
    lines += ["| " + " | ".join([str(i), *(_cell(v, digits.get(c)) for c, v in zip(table.columns, row))]) + " |"
              for i, row in zip(table.index, table.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def flat(run: dict) -> dict:
    """One run as one row: its settings and the scores at the kept epoch (accuracy/F1 in %)."""
    at = kept(run)
    row = {k: v for k, v in run.items() if k != "log"}
    row.update(kept_epoch=at["epoch"], max_epochs=run["epochs"], kept_train_seconds=at["train_seconds"])
    for split in ("validation", "dev"):
        row.update({f"{split}_accuracy": 100 * at[f"{split}_accuracy"], f"{split}_f1": 100 * at[f"{split}_f1"],
                    f"{split}_mcc": at[f"{split}_mcc"]})
    return row


def time_to(run: dict, accuracy: float) -> float:
    """Training seconds until validation accuracy first reaches ``accuracy`` (a fraction); NaN if never."""
    return next((e["train_seconds"] for e in run["log"] if e["validation_accuracy"] >= accuracy - 1e-12), math.nan)


def method_table(rows, methods: list[str], chosen: dict[str, float]):
    """Mean, std and every seed of dev accuracy/F1 at the chosen setting, per method."""
    import pandas as pd

    out = []
    for method in methods:
        lr = chosen.get(method) or chosen.get(METHODS[method].parent or "")
        runs = rows[(rows.method == method) & (rows.lr == lr) & rows.part.isin(["grid", "seeds", "ablation"])]
        if runs.empty:
            continue
        runs = runs.sort_values("seed")
        out.append({
            "method": method, "lr": lr, "max_epochs": int(runs.max_epochs.iloc[0]),
            "kept_epochs": " ".join(f"{e:g}" for e in runs.kept_epoch),
            "trainable": int(runs.trainable.iloc[0]), "trainable_pct": runs.trainable_pct.iloc[0],
            "checkpoint_mb": runs.checkpoint_bytes.iloc[0] / 1e6, "seeds": len(runs),
            "acc_mean": runs.dev_accuracy.mean(), "acc_std": runs.dev_accuracy.std(),
            "f1_mean": runs.dev_f1.mean(), "f1_std": runs.dev_f1.std(),
            "acc_per_seed": " ".join(f"{a:.1f}" for a in runs.dev_accuracy),
        })
    return pd.DataFrame(out).set_index("method") if out else pd.DataFrame()


DIGITS = {"lr": None, "trainable_pct": 3, "checkpoint_mb": 3, "acc_mean": 1, "acc_std": 1, "f1_mean": 1, "f1_std": 1,
          "validation_mcc": 3, "validation_accuracy": 1, "seconds": 0, "ratio": 2}


def report(folder: Path) -> None:
    import pandas as pd

    runs = read_runs(folder)
    for stale in ("runs.csv", "grid.csv", "grid.md", "methods.csv", "methods.md", "ablations.csv",
                  "ablations.md", "tta.csv", "tta.md", "methods.png"):
        (folder / stale).unlink(missing_ok=True)  # nothing may report runs that are gone
    if not runs:
        print("no finished runs yet")
        return
    rows = pd.DataFrame([flat(r) for r in runs])
    rows.to_csv(folder / "runs.csv", index=False)
    chosen = choose(runs)
    grid = rows[rows.part == "grid"].set_index("method")[["lr", "kept_epoch", "validation_mcc", "validation_accuracy"]]
    grid.insert(1, "chosen", [chosen.get(m) == lr for m, lr in zip(grid.index, grid.lr)])
    grid.to_csv(folder / "grid.csv")
    (folder / "grid.md").write_text(markdown(grid, {"validation_mcc": 3, "validation_accuracy": 1}))
    digits = {k: v for k, v in DIGITS.items() if v is not None}
    for name, methods in (("methods", HEADLINE), ("ablations", [m for m in METHODS if METHODS[m].parent])):
        table = method_table(rows, methods, chosen)
        if not table.empty:
            table.to_csv(folder / f"{name}.csv")
            (folder / f"{name}.md").write_text(markdown(table, digits))
            print(table.round(3).to_string())
    report_tta(runs, folder)
    plot_methods(rows, chosen, folder)


def report_tta(runs: list[dict], folder: Path) -> None:
    """Seconds of training until validation first reaches (a) majority + 5 points, (b) full FT's best."""
    import pandas as pd

    tta = {r["method"]: r for r in runs if r["part"] == "tta" and r["method"] in TTA_METHODS}
    if set(tta) != set(TTA_METHODS):
        return
    majority = tta["full"]["validation_majority"]
    full_best = max(e["validation_accuracy"] for e in tta["full"]["log"])
    targets = {"majority_plus_5": majority + 0.05, "full_ft_best": full_best}
    rows = []
    for target, accuracy in targets.items():
        seconds = {m: time_to(tta[m], accuracy) for m in TTA_METHODS}
        rows.append({"target": target, "validation_accuracy": 100 * accuracy, "bitfit_seconds": seconds["bitfit"],
                     "full_seconds": seconds["full"], "ratio": seconds["bitfit"] / seconds["full"]})
    table = pd.DataFrame(rows).set_index("target")
    table.to_csv(folder / "tta.csv")
    (folder / "tta.md").write_text(markdown(table, {"validation_accuracy": 1, "bitfit_seconds": 0,
                                                    "full_seconds": 0, "ratio": 2}))


def plot_methods(rows, chosen: dict[str, float], folder: Path) -> None:
    """Dev accuracy and F1 per method at its chosen setting: every seed a dot, the mean a bar, the majority a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [m for m in METHODS if chosen.get(m) or chosen.get(METHODS[m].parent or "")]
    if not order:
        return
    positive = rows.dev_positive_share.iloc[0]  # predicting "equivalent" for every pair scores these
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, label, floor in ((axes[0], "dev_accuracy", "dev accuracy (%)", 100 * max(positive, 1 - positive)),
                                     (axes[1], "dev_f1", "dev F1 (%)", 100 * 2 * positive / (1 + positive))):
        values = []
        for i, method in enumerate(order):
            lr = chosen.get(method) or chosen.get(METHODS[method].parent or "")
            seeds = rows[(rows.method == method) & (rows.lr == lr) & (rows.part != "tta")][metric]
            values += list(seeds)
            ax.scatter([i] * len(seeds), seeds, s=14, color="tab:blue", alpha=0.7, zorder=3)
            ax.hlines(seeds.mean(), i - 0.3, i + 0.3, color="black", zorder=4)
        ax.axhline(floor, color="tab:red", linestyle="--", linewidth=1, label="all 'equivalent' (majority class)")
        low, high = min(values + [floor]), max(values + [floor])
        ax.set_ylim(low - 0.15 * (high - low) - 0.5, high + 0.15 * (high - low) + 0.5)
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
        ax.set(ylabel=label, title=f"MRPC {label.split(' (')[0]}: seeds (dots) and mean (bar)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "methods.png", dpi=120)
    plt.close(fig)
