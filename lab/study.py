"""The comparison study as 02-Train shows it: the recipe it chose, its headline, this run among its seeds.

The study (``python -m study.run``, protocol 3) writes its tables into ``results/v3/`` as its runs
finish, ``recipe.json`` among them; protocol 2's tables are in ``results/v2/``. Every function here
reads whatever is there and says so when nothing is. The sentences are built from the numbers they
describe, so they stay true whatever the tables hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lab.recipe import METHOD_NAMES, STUDY_DIR, RunSettings, lr_text, read_recipe

#: Where protocol 2's tables are kept with their rule.
P2_DIR = "results/v2"
#: Protocol 2's rule, shown wherever one of its numbers is.
P2_RULE = "protocol 2: at most 6 epochs (Full FT 4), the tuning seed 0 among the reported seeds"

if TYPE_CHECKING:
    import pandas as pd


def kept_text(label: str, trainer, seconds: float) -> str:
    """02's line on a finished run: its rate and epochs, the epoch it kept, dev there, and its wall time."""
    from lab.models import get_device
    from lab.training import kept_row

    kept, args = kept_row(trainer), trainer.args
    last = trainer.state.epoch or 0
    return (f"{label}, lr {lr_text(args.learning_rate)}, at most {args.num_train_epochs:g} epochs: trained {last:g}, "
            f"kept epoch {kept.name:g} (validation MCC {kept['eval_validation_mcc']:.3f}). Dev at that epoch: accuracy "
            f"{100 * kept['eval_dev_accuracy']:.1f}, F1 {100 * kept['eval_dev_f1']:.1f}. "
            f"{seconds:.0f} s on this {get_device().type}, evaluations included.")


def study_shown(results_dir: str | os.PathLike = STUDY_DIR, older: str | os.PathLike = P2_DIR) -> tuple[str, str]:
    """``(folder, rule)`` of the headline table 02 shows: protocol 3's once every method in its recipe has all
    its planned seeds, else protocol 2's, with its rule (a table half filled would compare unlike methods)."""
    recipe = read_recipe(results_dir)
    methods = (recipe or {}).get("methods", {})
    done = bool(methods) and all(len(m["seeds"]) >= m["seeds_planned"] for m in methods.values())
    done = done and (Path(results_dir) / "methods.csv").is_file()
    return (str(results_dir), "protocol 3") if done else (str(older), P2_RULE)


def _per_seed_pairs(kept: object, last: object) -> str:
    """``"17 14 23"`` and ``"20 17 26"`` (one number per seed, as methods.csv holds them) as ``"17/20 14/17 23/26"``."""
    return " ".join(f"{k}/{l}" for k, l in zip(str(kept).split(), str(last).split()))


def headline(results_dir: str | os.PathLike = STUDY_DIR):
    """The study's headline table (``methods.csv``) in the notebook's words, or None when it is not there."""
    import pandas as pd

    path = Path(results_dir) / "methods.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, index_col="method")
    epochs = ({"kept / last epoch (per seed)": [_per_seed_pairs(k, l) for k, l in zip(table["kept_epochs"], table["last_epochs"])]}
              if "last_epochs" in table else {"max epochs": table["max_epochs"],
                                              "kept epochs (per seed)": table["kept_epochs"].astype(str)})
    shown = pd.DataFrame({
        "lr": [lr_text(r) for r in table["lr"]], **epochs, "trainable %": table["trainable_pct"].round(3),
        "checkpoint MB": table["checkpoint_mb"].round(3), "seeds": table["seeds"],
        "dev accuracy": [_mean_std(m, s) for m, s in zip(table["acc_mean"], table["acc_std"])],
        "dev F1": [_mean_std(m, s) for m, s in zip(table["f1_mean"], table["f1_std"])],
        "accuracy per seed": table["acc_per_seed"].astype(str)}, index=table.index)
    shown.index = [METHOD_NAMES.get(m, m) for m in table.index]
    shown.index.name = "method"
    return shown


def against_majority(accuracy: float, majority: float, mcc: float | None, pair_points: float, split: str) -> str:
    """How a score compares with always answering the majority class, told by accuracy and, where known, MCC.

    Any constant answer scores MCC 0, so "stuck on the majority class" is said only when MCC is near 0.
    """
    above = accuracy - majority
    score = (f"高出 {above:.1f} 分" if above >= pair_points else f"低 {-above:.1f} 分" if above <= -pair_points
             else "差不多")
    if mcc is None or mcc != mcc:
        return score + "。"
    if mcc <= 0.05:
        return f"{score}；{split} MCC {mcc:.2f}，幾乎停在多數類（永遠猜同一類的 MCC 是 0）。"
    return f"{score}；但 {split} MCC {mcc:.2f}（永遠猜同一類是 0）：它沒有停在多數類，分得出一部分 not_equivalent 的對。"


def _reported(runs: pd.DataFrame) -> pd.Series:
    """Which rows of a ``runs.csv`` table are reported seeds (a boolean Series).

    Protocol 3 (a ``protocol`` column of 3 or more) reports seeds 1..N only (``part == "seeds"``); its grid at
    seed 0 only chose the rate. Protocol 2 (``P2_RULE``; its files may have no ``protocol`` column) reported the
    tuning seed 0 of the grid among its seeds.
    """
    import pandas as pd

    protocol = runs["protocol"] if "protocol" in runs else pd.Series(2, index=runs.index)
    return (runs["part"] == "seeds") | ((runs["part"] == "grid") & (protocol.fillna(2) < 3))


def _mean_dev_mcc(folder: Path, method: str) -> float | None:
    """Mean dev MCC at the kept epoch of ``method``'s reported runs in ``runs.csv`` (None when not there).

    The reported runs are those :func:`_reported` names, at the rate of ``methods.csv`` where it is there.
    """
    import pandas as pd

    path = folder / "runs.csv"
    if not path.is_file():
        return None
    runs = pd.read_csv(path)
    chosen = runs[(runs["method"] == method) & _reported(runs)]
    if (folder / "methods.csv").is_file():
        lr = pd.read_csv(folder / "methods.csv", index_col="method")["lr"].get(method)
        chosen = chosen[chosen["lr"] == lr]
    return float(chosen["dev_mcc"].mean()) if len(chosen) else None


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if std == std else f"{mean:.1f}"


def _spread(std: float, seeds: int) -> str:
    return f"標準差 {std:.1f}，{seeds} 個 seed" if std == std else f"{seeds} 個 seed，還沒有標準差"


def headline_sentences(results_dir: str | os.PathLike, majority_accuracy: float, dev_pairs: int,
                       rule: str = "protocol 3") -> list[str]:
    """Three to five sentences of what the study's headline table shows, built from its numbers.

    Args:
        majority_accuracy: dev accuracy (%) of predicting the majority class for every pair.
        dev_pairs: pairs in GLUE dev (one pair is ``100 / dev_pairs`` points).
        rule: the protocol the table was made under, named in the first sentence.
    """
    import pandas as pd

    folder = Path(results_dir)
    if not (folder / "methods.csv").is_file():
        return []
    table = pd.read_csv(folder / "methods.csv", index_col="method")
    trials = ""
    if (folder / "grid.csv").is_file():
        per_method = pd.read_csv(folder / "grid.csv")["method"].value_counts()
        counts = sorted(set(per_method[per_method.index.isin(table.index)]))
        trials = f"在 {'／'.join(map(str, counts))} 個學習率之間（seed 0）"
    said = [f"規則（{rule}）：每個方法{trials}依**驗證集 MCC** 挑學習率與 epoch，dev 只在挑定的那一點量一次；"
            f"表中的 dev 數字是各 seed 的平均 ± 標準差（dev 共 {dev_pairs} 對，一對 = {100 / dev_pairs:.2f} 分）。"]
    name = lambda m: METHOD_NAMES.get(m, m)  # noqa: E731
    if {"bitfit", "full"} <= set(table.index):
        b, f = table.loc["bitfit"], table.loc["full"]
        gap, widest = b.acc_mean - f.acc_mean, max(b.acc_std, f.acc_std)
        verdict = ("小於兩者較大的標準差：分不出高下" if abs(gap) < widest else "大於兩者的標準差") if widest == widest \
            else "還沒有多個 seed，不能判斷是不是雜訊"
        said.append(f"BitFit 的 dev accuracy {b.acc_mean:.1f}（{_spread(b.acc_std, int(b.seeds))}），"
                    f"Full FT {f.acc_mean:.1f}（{_spread(f.acc_std, int(f.seeds))}）：差 {gap:+.1f} 分，{verdict}。")
        said.append(f"BitFit 訓練 {b.trainable_pct:.3f} % 的參數，要存的檔案 {b.checkpoint_mb:.2f} MB；"
                    f"Full FT 是 {f.trainable_pct:.0f} %、{f.checkpoint_mb:.1f} MB。")
    if "frozen" in table.index:
        z = table.loc["frozen"]
        said.append(f"只訓練分類頭（Frozen）{z.acc_mean:.1f}，全部猜 equivalent 是 {majority_accuracy:.1f}："
                    + against_majority(z.acc_mean, majority_accuracy, _mean_dev_mcc(folder, "frozen"),
                                       100 / dev_pairs, "dev"))
    if len(table) >= 2:
        ranked = table.sort_values("acc_mean", ascending=False)
        first, second = ranked.index[0], ranked.index[1]
        gap = ranked.acc_mean.iloc[0] - ranked.acc_mean.iloc[1]
        widest = max(ranked.acc_std.iloc[0], ranked.acc_std.iloc[1])
        said.append(f"平均最高的是 {name(first)}（{ranked.acc_mean.iloc[0]:.1f}），領先 {name(second)} {gap:.1f} 分"
                    + ("，在 seed 間的標準差之內。" if widest == widest and gap < widest else "。"))
    missing = [name(m) for m in METHOD_NAMES if m not in table.index]
    if missing:  # the fifth sentence: what the table does not hold yet
        said = said[:4] + [f"表中還沒有 {'、'.join(missing)}：它們的學習率網格還沒跑完，研究跑完後這張表會補齊。"]
    return said[:5]


def _first_epoch(run: dict, accuracy: float) -> int | None:
    """The first epoch (1-based) whose validation accuracy reaches ``accuracy`` (a fraction); None if none does."""
    return next((i + 1 for i, e in enumerate(run["log"]) if e["validation_accuracy"] >= accuracy - 1e-12), None)


def tta_sentences(results_dir: str | os.PathLike = P2_DIR) -> list[str]:
    """What the study's time-to-accuracy runs measured, and why the ratio is what it is; ``[]`` before they ran.

    Reads ``tta.csv`` (seconds of training until validation first reaches each target, per method) and the
    two runs' per-epoch logs (``runs/tta-*.json``), which give the seconds an epoch takes and the epoch at which
    each method first reached the target.
    """
    import json
    import math

    import pandas as pd

    folder = Path(results_dir)
    runs = {}
    for path in sorted((folder / "runs").glob("tta-*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        runs[run["method"]] = run
    if not (folder / "tta.csv").is_file() or not {"bitfit", "full"} <= set(runs):
        return []
    table = pd.read_csv(folder / "tta.csv", index_col="target")
    b = runs["bitfit"]

    def took(method: str, seconds: float) -> str:
        run = runs[method]
        return f"{seconds:.0f} 秒" if seconds == seconds else f"{len(run['log'])} 個 epoch 內沒到"

    said = [f"{P2_RULE}；只有 seed 0。在研究的機器上（不是你這台）各自單獨訓練一次（{b['device']}，{b['threads']} 個執行緒，torch {b['torch']}）。"]
    for target, label in (("majority_plus_5", "多數類加 5 分"), ("full_ft_best", "Full FT 的最好成績")):
        row = table.loc[target]
        ratio = f"，BitFit / Full FT = {row.ratio:.2f}" if not math.isnan(row.ratio) else ""
        said.append(f"validation accuracy 第一次到 {row.validation_accuracy:.1f}（{label}）：BitFit "
                    f"{took('bitfit', row.bitfit_seconds)}，Full FT {took('full', row.full_seconds)}{ratio}。")
    per_epoch = {m: r["log"][-1]["train_seconds"] / len(r["log"]) for m, r in runs.items()}
    target = table.loc["majority_plus_5"].validation_accuracy / 100
    epochs = {m: _first_epoch(r, target) for m, r in runs.items()}
    reached = lambda m: f"在第 {epochs[m]} 個 epoch" if epochs[m] else "始終沒到"  # noqa: E731
    said.append(f"為什麼：BitFit 一個 epoch 平均 {per_epoch['bitfit']:.0f} 秒，Full FT {per_epoch['full']:.0f} 秒"
                f"（{per_epoch['bitfit'] / per_epoch['full']:.2f} 倍：省下權重的梯度與優化器狀態，前向與傳回每層輸入的梯度照算）；"
                f"差在要幾個 epoch：到多數類加 5 分，BitFit {reached('bitfit')}，Full FT {reached('full')}。")
    return said


def study_seeds(recipe: dict | None, table=None) -> dict[str, list[float]]:
    """The study's dev accuracy per reported seed, by the notebook's method names.

    With ``table`` (02's section 6, :func:`comparison_table`), only the rows that ran the study's
    recipe: the same rate, the same stopping rule and cap, and as many trainable parameters (so the
    same model). Rows of the demo, quick mode or another model match nothing.

    Returns:
        ``{name: [dev accuracy of every reported seed]}``; ``{}`` before the study has any.
    """
    if not recipe:
        return {}
    found = {}
    for method, facts in recipe["methods"].items():
        name = METHOD_NAMES.get(method, method)
        if not facts["seeds"]:
            continue
        if table is not None:
            if name not in table.index:
                continue
            if _differences(table.loc[name], facts, recipe):
                continue
        found[name] = [s["dev_accuracy"] for s in facts["seeds"]]
    return found


def _placed(value: float, seeds: list[float]) -> str:
    where = "在" if min(seeds) <= round(value, 1) <= max(seeds) else "低於" if value < min(seeds) else "高於"
    return f"{value:.1f}，{where}研究同一設定 {len(seeds)} 個 seed 的範圍（{min(seeds):.1f}–{max(seeds):.1f}）"


def _differences(row, facts: dict, recipe: dict) -> dict[str, tuple]:
    """Where a row of 02's table differs from the study's recipe for its method: ``{field: (this run, study)}``.

    The fields a run must share to be placed among the study's seeds: the rate, the cap, the patience,
    and the trainable count (the same count means the same model).
    """
    pairs = {"lr": (row.lr, lr_text(facts["lr"])), "max_epochs": (int(row.max_epochs), recipe["max_epochs"]),
             "patience": (int(row.patience), recipe["patience"]), "trainable": (int(row.trainable), facts["trainable"])}
    return {field: pair for field, pair in pairs.items() if pair[0] != pair[1]}


def _unlike_the_study(row, name: str, recipe: dict) -> str:
    """Why a row of this run is not placed among the study's seeds (``_differences``): another model, or other settings."""
    facts = next(f for m, f in recipe["methods"].items() if METHOD_NAMES.get(m, m) == name)
    if "trainable" in _differences(row, facts, recipe):
        return f"這次的模型不是研究的 {recipe['model']}（可訓練參數 {int(row.trainable):,} 對 {facts['trainable']:,}）"
    return (f"這次的設定不是研究的（lr {row.lr}、最多 {int(row.max_epochs)} 個 epoch、"
            + (f"patience {int(row.patience)}" if row.patience else "不提早停") + f"；研究是 lr {lr_text(facts['lr'])}、"
            f"最多 {recipe['max_epochs']} 個 epoch、patience {recipe['patience']}）")


def this_run_sentences(table, majority_accuracy: float, dev_pairs: int, recipe: dict | None = None) -> list[str]:
    """What 02's own comparison (one seed, one run) shows, from its table and, when given, the study's seeds.

    Args:
        table: one row per method (index: ``METHOD_NAMES`` values) with columns ``lr``, ``max_epochs``,
            ``patience``, ``steps``, ``kept_epoch``, ``trainable``, ``dev_accuracy``, ``train_s``.
        recipe: the study's ``recipe.json``: this run's scores are placed among the study's seeds of the
            same recipe (:func:`study_seeds`); the figure shows every seed, so a run it cannot be placed
            among is said to be unlike them, and why.
    """
    said = []
    shown, same = study_seeds(recipe), study_seeds(recipe, table)
    if "epochs_run" in table and table["patience"].max() > 0:
        said.append("每個方法照同一個停止規則訓練（validation MCC 連續 " + f"{int(table['patience'].max())} 個 epoch 沒進步就停）："
                    + "、".join(f"{m} 跑了 {r.epochs_run:g} 個 epoch、留下第 {r.kept_epoch:g} 個" for m, r in table.iterrows())
                    + "。")
    if {"BitFit", "Full FT"} <= set(table.index):
        b, f = table.loc["BitFit"], table.loc["Full FT"]
        gap = b.dev_accuracy - f.dev_accuracy
        said.append(f"這次執行（一個 seed）BitFit 的 dev accuracy {b.dev_accuracy:.1f}、Full FT {f.dev_accuracy:.1f}，"
                    f"差 {gap:+.1f} 分 = {abs(gap) * dev_pairs / 100:.0f} 對。")
        if {"BitFit", "Full FT"} <= set(same):
            study_gap = sum(same["BitFit"]) / len(same["BitFit"]) - sum(same["Full FT"]) / len(same["Full FT"])
            said.append(f"放進研究裡看：BitFit {_placed(b.dev_accuracy, same['BitFit'])}；Full FT "
                        f"{_placed(f.dev_accuracy, same['Full FT'])}。研究各 seed 的平均差是 {study_gap:+.1f} 分："
                        "一個 seed 的差距不代表兩個方法之間的差距。")
        elif {"BitFit", "Full FT"} <= set(shown):
            said.append(f"圖中的點是研究在 {recipe['model']} 上照它的設定跑的 seed；{_unlike_the_study(b, 'BitFit', recipe)}，"
                        "所以星號不放進它們的範圍比。一個 seed 的差距說不出哪個方法比較好。")
        else:
            said.append("研究還沒有 BitFit 與 Full FT 的 seed 可以比：一個 seed 的差距說不出哪個方法比較好。")
        run_epochs = lambda r: r.epochs_run if "epochs_run" in r and r.epochs_run else r.max_epochs  # noqa: E731
        said.append(f"訓練時間（不含評估）：BitFit {b.train_s:.0f} s（{b.train_s / run_epochs(b):.0f} s／epoch），"
                    f"Full FT {f.train_s:.0f} s（{f.train_s / run_epochs(f):.0f} s／epoch）。")
    if list(table.index) == ["BitFit"]:
        b = table.loc["BitFit"]
        said.append(f"只訓練了 BitFit（示範模式）：dev accuracy {b.dev_accuracy:.1f}，全部猜 equivalent 是 "
                    f"{majority_accuracy:.1f}，高出 {b.dev_accuracy - majority_accuracy:.1f} 分。")
        others = [n for n in shown if n != "BitFit"]
        if "BitFit" in same:
            said.append(f"放進研究裡看：BitFit {_placed(b.dev_accuracy, same['BitFit'])}。")
        elif "BitFit" in shown:
            said.append(f"{_unlike_the_study(b, 'BitFit', recipe)}：星號不放進研究 seed 的範圍比。")
        said.append(f"沒有訓練的方法（{'、'.join(others)}）看圖中研究的 seed（{recipe['model']}）。" if others else
                    "研究還沒有其他方法的 seed：比較等研究跑完（第 7 節）。")
    if "Frozen (head only)" in table.index:
        z = table.loc["Frozen (head only)"]
        said.append(f"Frozen {z.dev_accuracy:.1f}，全部猜 equivalent 是 {majority_accuracy:.1f}："
                    + against_majority(z.dev_accuracy, majority_accuracy, z.get("validation_mcc"), 100 / dev_pairs,
                                       "validation")
                    + (f"放進研究裡看：Frozen {_placed(z.dev_accuracy, same['Frozen (head only)'])}。"
                       if "Frozen (head only)" in same else ""))
    return said


def show_among_seeds(table, recipe: dict | None, majority: float, dev_pairs: int, title: str):
    """02's section 6: the sentences placing this run, then the study's reported seeds of Frozen, BitFit and Full FT
    (``plot_seeds``: all three, whichever of them this run trained) with this run marked."""
    from lab.analysis import plot_seeds

    print("\n".join(f"* {s}" for s in this_run_sentences(table, 100 * majority, dev_pairs, recipe)))
    seeds = study_seeds(recipe)
    shown = {n: seeds[n] for n in (METHOD_NAMES[m] for m in ("frozen", "bitfit", "full")) if n in seeds}
    source = f"the study ({recipe['model']})" if recipe else "the study"
    return plot_seeds(shown, dict(table["dev_accuracy"]), majority, title, source=source)


# ----- 02's run settings: the study's choice or the defaults, and what QUICK and DEMO change -------------------

def comparison_table(trainers: dict, run: RunSettings):
    """02's section 6: one row per trained method, its settings and its scores at the kept epoch."""
    import pandas as pd

    from bitfit_utils import count_parameters
    from lab.training import history_frame, kept_row

    rows = []
    for method, trainer in trainers.items():
        row, (trainable, total) = kept_row(trainer), count_parameters(trainer.model)
        rows.append({"method": METHOD_NAMES[method], "lr": lr_text(run.lr[method]), "max_epochs": run.epochs[method],
                     "patience": run.patience or 0, "epochs_run": trainer.state.epoch, "steps": trainer.state.global_step, "kept_epoch": row.name, "trainable": trainable,
                     "trainable_%": 100 * trainable / total, "validation_mcc": row["eval_validation_mcc"],
                     "dev_accuracy": 100 * row["eval_dev_accuracy"], "dev_f1": 100 * row["eval_dev_f1"],
                     "train_s": history_frame(trainer)["train_seconds"].iloc[-1]})
    return pd.DataFrame(rows).set_index("method")


