"""Tables and plot of protocol 3, rebuilt from its run files (``python -m study.report [--out DIR]``).

Writes into the results folder (``results/v3`` by default):

* ``runs.csv``: one row per run at the epoch the rule keeps, with its kept and last epoch;
* ``head.csv`` / ``head.md``: the head check, validation MCC only (what chose the head);
* ``grid.csv`` / ``grid.md``: every grid trial (seed 0), validation scores only (what chose the rate);
* ``methods.csv`` / ``methods.md``: every headline method at its chosen rate over the reported seeds
  (1..N, never the tuning seed 0): dev at the kept epoch, mean, std and every seed, kept and last epochs;
* ``tta.csv`` / ``tta.md``: per reported seed, training seconds to reach two validation targets, at the
  epoch cost measured by the cost runs (the machine to itself), and the BitFit / Full FT ratio;
* ``tasks.csv`` / ``tasks.md``: BitFit and Full FT per task (MRPC, SST-2, CoLA), the task's GLUE metric on
  dev over seeds 1..3, trainable parameters, pack bytes against a full checkpoint;
* ``recipe.json``: what the study chose (head, stopping rule, rate per method) and every reported seed's
  scores: what 02 trains with and places its own run among;
* ``methods.png``: dev accuracy per method, every seed a dot beside the mean.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import median

from lab.selection import PATIENCE, SELECT_BY
from lab.tasks import get_task, in_task_order
from lab.registry import HEADLINE, METHODS
from study.p2_report import markdown
from study.run import (MAX_EPOCHS, OFFLINE_MODEL, RESULTS, TASK_METHODS, choose_head, choose_lrs, kept, read_runs,
                       spent_hours, task_of)

TTA_METHODS = ("bitfit", "full")


def flat(run: dict) -> dict:
    """One run as one row: its settings, kept and last epoch, and the scores at the kept epoch (% for accuracy/F1)."""
    at = kept(run)
    row = {k: v for k, v in run.items() if k not in ("log", "loadavg_1min")}
    row.update(kept_epoch=at["epoch"], kept_train_seconds=at["train_seconds"])
    for split in ("validation", "dev"):
        row.update({f"{split}_accuracy": 100 * at[f"{split}_accuracy"], f"{split}_mcc": at[f"{split}_mcc"]})
        if f"{split}_f1" in at:  # F1 is MRPC's (and reported for it only)
            row[f"{split}_f1"] = 100 * at[f"{split}_f1"]
    return row


def head_table(runs: list[dict]):
    """The head check: validation MCC at the kept epoch per seed and its mean, per head (no dev number)."""
    import pandas as pd

    rows = []
    for head in sorted({r["head"] for r in runs if r["part"] == "head"}):
        these = sorted((r for r in runs if r["part"] == "head" and r["head"] == head), key=lambda r: r["seed"])
        mccs = [kept(r)["validation_mcc"] for r in these]
        rows.append({"head": head, "seeds": " ".join(str(r["seed"]) for r in these),
                     "validation MCC per seed": " ".join(f"{m:.3f}" for m in mccs),
                     "mean validation MCC": sum(mccs) / len(mccs),
                     "kept / last epoch": " ".join(f"{r['kept_epoch']:g}/{r['last_epoch']:g}" for r in these),
                     "first epoch off the majority class": " ".join(str(_first_above_zero(r)) for r in these)})
    return pd.DataFrame(rows).set_index("head") if rows else pd.DataFrame()


def _first_above_zero(run: dict) -> int | str:
    return next((int(e["epoch"]) for e in run["log"] if e["validation_mcc"] > 0), "never")


def grid_table(runs: list[dict], chosen: dict[str, float]):
    """Every grid trial at seed 0: validation scores at the kept epoch, kept and last epoch, the rate chosen."""
    import pandas as pd

    rows = [{"method": r["method"], "lr": r["lr"], "kept epoch": r["kept_epoch"], "last epoch": r["last_epoch"],
             "validation MCC": kept(r)["validation_mcc"], "validation accuracy": 100 * kept(r)["validation_accuracy"],
             "chosen": chosen.get(r["method"]) == r["lr"]}
            for r in sorted(runs, key=lambda r: (HEADLINE.index(r["method"]), r["lr"])) if r["part"] == "grid"]
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


def method_table(runs: list[dict], chosen: dict[str, float]):
    """Every headline method at its chosen rate over the reported seeds: dev mean, std, every seed, epochs."""
    import pandas as pd

    out = []
    for method in HEADLINE:
        these = sorted((r for r in runs if r["part"] == "seeds" and r["method"] == method
                        and r["lr"] == chosen.get(method)), key=lambda r: r["seed"])
        if not these:
            continue
        acc = pd.Series([100 * kept(r)["dev_accuracy"] for r in these])
        f1 = pd.Series([100 * kept(r)["dev_f1"] for r in these])
        out.append({"method": method, "lr": chosen[method], "seeds": len(these), "of": METHODS[method].seeds,
                    "trainable": these[0]["trainable"], "trainable_pct": these[0]["trainable_pct"],
                    "checkpoint_mb": these[0]["checkpoint_bytes"] / 1e6,
                    "acc_mean": acc.mean(), "acc_std": acc.std(), "f1_mean": f1.mean(), "f1_std": f1.std(),
                    "acc_per_seed": " ".join(f"{a:.1f}" for a in acc),
                    "kept_epochs": " ".join(f"{r['kept_epoch']:g}" for r in these),
                    "last_epochs": " ".join(f"{r['last_epoch']:g}" for r in these),
                    "kept_at_cap": sum(bool(r["kept_at_cap"]) for r in these)})
    return pd.DataFrame(out).set_index("method") if out else pd.DataFrame()


def _headline_score(run: dict, metric: str) -> float:
    """The task's GLUE metric on dev at the kept epoch: accuracy and F1 in %, MCC as is."""
    value = kept(run)[f"dev_{metric}"]
    return value if metric == "mcc" else 100 * value


def task_table(runs: list[dict], chosen: dict[str, float]):
    """BitFit and Full FT per task: the task's metric on dev over the reported seeds, size of what each task stores.

    MRPC's rows are its ``seeds`` runs at the chosen rate; the other tasks' are their ``task`` runs
    (MRPC's head and rates, ``study.run.TASK_STUDY``).
    """
    import pandas as pd

    rows = []
    for task in in_task_order(["mrpc", *(task_of(r) for r in runs)]):  # the lab's order, not the run files'
        metric = get_task(task).metrics[0]
        for method in TASK_METHODS:
            part = "seeds" if task == "mrpc" else "task"
            these = sorted((r for r in runs if task_of(r) == task and r["part"] == part and r["method"] == method
                            and r["lr"] == chosen.get(method)), key=lambda r: r["seed"])
            if not these:
                continue
            scores = pd.Series([_headline_score(r, metric) for r in these])
            digits = 3 if metric == "mcc" else 1
            rows.append({"task": task, "method": method, "metric": f"dev {metric}", "lr": these[0]["lr"],
                         "seeds": len(these), "mean": round(scores.mean(), digits),
                         "std": round(scores.std(), digits) if len(these) > 1 else math.nan,
                         "per_seed": " ".join(f"{v:.3f}" if metric == "mcc" else f"{v:.1f}" for v in scores),
                         "kept / last epochs": " ".join(f"{r['kept_epoch']:g}/{r['last_epoch']:g}" for r in these),
                         "train_examples": these[0]["train_pairs"], "trainable": these[0]["trainable"],
                         "stored_mb": these[0]["checkpoint_bytes"] / 1e6})
    return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame()


def task_markdown(table, digits: dict[str, int]) -> str:
    """``task_table`` as markdown: mean and std with their metric's decimals on each row (0.512, 76.0), the other
    columns with ``digits`` as :func:`markdown`."""
    shown = table.astype({"mean": object, "std": object})
    for i, row in enumerate(table.itertuples(index=False)):
        places = 3 if row.metric.endswith("mcc") else 1
        for column in ("mean", "std"):
            value = getattr(row, column)
            shown.iloc[i, table.columns.get_loc(column)] = value if value != value else f"{value:.{places}f}"
    return markdown(shown, digits)


def recipe(runs: list[dict], head: str | None, chosen: dict[str, float]) -> dict:
    """What the study chose and what its reported seeds scored, for 02 to train with and place its run among."""
    methods = {}
    for method, lr in chosen.items():
        seeds = sorted((r for r in runs if task_of(r) == "mrpc" and r["part"] == "seeds" and r["method"] == method
                        and r["lr"] == lr), key=lambda r: r["seed"])
        at_rate = seeds or [r for r in runs if task_of(r) == "mrpc" and r["part"] == "grid" and r["method"] == method
                            and r["lr"] == lr]
        methods[method] = {
            "lr": lr, "trainable": at_rate[0]["trainable"],
            "mean_epochs_run": sum(r["last_epoch"] for r in at_rate) / len(at_rate),
            "seeds_planned": METHODS[method].seeds,
            "seeds": [{"seed": r["seed"], "dev_accuracy": 100 * kept(r)["dev_accuracy"],
                       "dev_f1": 100 * kept(r)["dev_f1"], "validation_mcc": kept(r)["validation_mcc"],
                       "kept_epoch": r["kept_epoch"], "last_epoch": r["last_epoch"]} for r in seeds]}
    return {"protocol": runs[0].get("protocol"), "model": OFFLINE_MODEL, "head": head, "select_by": SELECT_BY,
            "patience": PATIENCE, "max_epochs": MAX_EPOCHS, "methods": methods}


def epochs_to(run: dict, accuracy: float) -> int | None:
    """The first epoch whose validation accuracy reaches ``accuracy`` (a fraction); None if none did."""
    return next((int(e["epoch"]) for e in run["log"] if e["validation_accuracy"] >= accuracy - 1e-12), None)


def cost_per_epoch(runs: list[dict]) -> dict[str, float]:
    """Training seconds an epoch costs per method, from the cost runs (alone on the machine)."""
    return {r["method"]: r["log"][-1]["train_seconds"] / r["log"][-1]["epoch"] for r in runs if r["part"] == "cost"}


def tta_rows(runs: list[dict], chosen: dict[str, float]) -> tuple[list[dict], dict[str, float]]:
    """Per reported seed of BitFit and Full FT: epochs and seconds to (a) majority + 5 points, (b) Full FT's median best.

    Returns the rows and the targets (fractions of validation accuracy). A seed that never reaches a
    target has ``None`` epochs and infinite seconds: it is counted, not dropped.
    """
    seeds = {m: [r for r in runs if r["part"] == "seeds" and r["method"] == m and r["lr"] == chosen.get(m)]
             for m in TTA_METHODS}
    if not seeds["full"] or not seeds["bitfit"]:
        return [], {}
    majority = seeds["full"][0]["validation_majority"]
    targets = {"majority_plus_5": majority + 0.05,
               "full_ft_median_best": median(kept(r)["validation_accuracy"] for r in seeds["full"])}
    cost = cost_per_epoch(runs)
    rows = []
    for method in TTA_METHODS:
        for r in sorted(seeds[method], key=lambda r: r["seed"]):
            row = {"method": method, "seed": r["seed"]}
            for target, accuracy in targets.items():
                epochs = epochs_to(r, accuracy)
                row[f"{target}_epochs"] = epochs
                row[f"{target}_seconds"] = (epochs * cost[method] if epochs is not None else math.inf) \
                    if method in cost else math.nan
            rows.append(row)
    return rows, targets


def tta_ratios(rows: list[dict], target: str) -> dict[str, float]:
    """BitFit / Full FT seconds to ``target``: each BitFit seed against the median Full FT seed.

    Seeds are not paired by number (seed 1 of BitFit has nothing to do with seed 1 of Full FT): every BitFit
    seed's seconds are divided by the median of Full FT's seeds. Returns the median of those ratios (the
    median BitFit seed), their range, and how many seeds of each method never reached the target (infinite
    seconds: counted, so a median can be infinite).
    """
    bitfit = [r[f"{target}_seconds"] for r in rows if r["method"] == "bitfit"]
    full = [r[f"{target}_seconds"] for r in rows if r["method"] == "full"]
    ratios = [b / median(full) for b in bitfit]
    return {"median_ratio": median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "bitfit_never": sum(v == math.inf for v in bitfit), "full_never": sum(v == math.inf for v in full)}


TTA_TARGETS_ZH = {"majority_plus_5": "多數類加 5 分", "full_ft_median_best": "Full FT 各 seed 最好成績的中位數"}


def tta_lines(rows: list[dict], targets: dict[str, float], runs: list[dict]) -> list[str]:
    """tta.md's sentences under the table: the ratio per target, then why it is what it is (the cost runs)."""
    lines = []
    for target, accuracy in targets.items():
        r = tta_ratios(rows, target)
        lines.append(f"* 到 validation accuracy {100 * accuracy:.1f}（{TTA_TARGETS_ZH.get(target, target)}）："
                     f"BitFit 每個 seed 的訓練秒數除以 Full FT 各 seed 秒數的中位數，中位數 {r['median_ratio']:.2f}，"
                     f"範圍 {r['min_ratio']:.2f} 到 {r['max_ratio']:.2f}；始終沒到的 seed：BitFit {r['bitfit_never']} 個、"
                     f"Full FT {r['full_never']} 個。")
    cost = cost_per_epoch(runs)
    alone = next((r for r in runs if r["part"] == "cost"), None)
    first = "majority_plus_5"
    epochs = {m: [r[f"{first}_epochs"] for r in rows if r["method"] == m] for m in TTA_METHODS}
    reached = {m: [e for e in v if e is not None] for m, v in epochs.items()}
    if alone is not None and set(TTA_METHODS) <= set(cost) and all(reached.values()):
        lines.append(f"* 為什麼：研究的機器上（{alone.get('device', '?')}，{alone.get('threads', '?')} 個執行緒，單獨跑）"
                     f"訓練一個 epoch，BitFit {cost['bitfit']:.0f} 秒、Full FT {cost['full']:.0f} 秒"
                     f"（{cost['bitfit'] / cost['full']:.2f} 倍：省下權重的梯度與優化器狀態，前向與傳回每層輸入的梯度照算）；"
                     f"差在要幾個 epoch：到多數類加 5 分，BitFit 各 seed 要 {' '.join(str(e) for e in epochs['bitfit'])} 個，"
                     f"Full FT 要 {' '.join(str(e) for e in epochs['full'])} 個" +
                     ("（None：始終沒到）。" if None in epochs["bitfit"] + epochs["full"] else "。"))
    return lines


def report(folder: Path = RESULTS) -> None:
    """Rebuild every table and the plot of ``folder`` from its run files."""
    import pandas as pd

    every = read_runs(folder)
    if not every:
        print(f"No run files in {folder / 'runs'} yet.")
        return
    runs = [r for r in every if task_of(r) == "mrpc"]
    head = choose_head(runs, quick=runs[0].get("quick", False))
    chosen = choose_lrs(runs, head, quick=runs[0].get("quick", False)) if head else {}
    pd.DataFrame([flat(r) for r in runs]).to_csv(folder / "runs.csv", index=False)
    written = ["runs.csv"]
    for name, table, digits in (("head", head_table(runs), {"mean validation MCC": 3}),
                                ("grid", grid_table(runs, chosen), {"validation MCC": 3, "validation accuracy": 1}),
                                ("methods", method_table(runs, chosen),
                                 {"acc_mean": 1, "acc_std": 1, "f1_mean": 1, "f1_std": 1, "trainable_pct": 3,
                                  "checkpoint_mb": 3}),
                                ("tasks", task_table(every, chosen), {"stored_mb": 3})):
        if not table.empty:
            table.to_csv(folder / f"{name}.csv")
            (folder / f"{name}.md").write_text((task_markdown if name == "tasks" else markdown)(table, digits))
            written.append(f"{name}.md")
    rows, targets = tta_rows(runs, chosen)
    if rows and any(r["method"] == "full" for r in rows) and cost_per_epoch(runs):
        table = pd.DataFrame(rows).set_index("method")
        table.to_csv(folder / "tta.csv")
        lines = [markdown(table, {c: 1 for c in table.columns if c.endswith("_seconds")})]
        lines += tta_lines(rows, targets, runs)
        (folder / "tta.md").write_text("\n".join(lines) + "\n")
        written.append("tta.md")
    methods = method_table(runs, chosen)
    if not methods.empty:
        plot_methods(runs, chosen, folder / "methods.png")
        written.append("methods.png")
    if head and chosen:
        (folder / "recipe.json").write_text(json.dumps(recipe(runs, head, chosen), indent=1) + "\n")
        written.append("recipe.json")
    else:  # no rate chosen (yet, or any more): 02 must not train with an old choice
        (folder / "recipe.json").unlink(missing_ok=True)
    hours = ", ".join(f"{h:.1f} h of {d}" for d, h in sorted(spent_hours(folder).items()))
    print(f"head: {head}; chosen rates: {chosen}; wrote {', '.join(written)} in {folder}; machine time: {hours}")


def plot_methods(runs: list[dict], chosen: dict[str, float], path: Path) -> None:
    """Dev accuracy per method at its chosen rate: every reported seed a dot, the mean a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in HEADLINE if any(r["part"] == "seeds" and r["method"] == m for r in runs)]
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.2))
    for i, method in enumerate(methods):
        accs = [100 * kept(r)["dev_accuracy"] for r in runs
                if r["part"] == "seeds" and r["method"] == method and r["lr"] == chosen.get(method)]
        if accs:
            ax.bar(i, sum(accs) / len(accs), color="#cfd8e3", width=0.6)
            ax.scatter([i] * len(accs), accs, color="#1f4e79", s=14, zorder=3)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("dev accuracy (%)")
    ax.set_ylim(60, 90)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    report(parser.parse_args().out)


if __name__ == "__main__":
    main()
