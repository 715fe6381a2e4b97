"""The comparison study as 02-Train shows it: the settings it chose, its headline, this run beside it.

The study (``benchmarks/compare_methods.py``) writes its tables into ``results/`` as its runs
finish; every function here reads whatever is there, and says so when nothing is. The
sentences are built from the numbers they describe, so they stay true whatever the tables hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: (learning rate, max epochs) per method until the study's grid has chosen; the epochs are the
#: study's own (``compare_methods.METHODS``), the rates the middle of its grids.
DEFAULT_SETTINGS: dict[str, tuple[float, int]] = {"frozen": (1e-2, 6), "bitfit": (1e-3, 6), "full": (5e-5, 4)}

#: How the notebooks name the study's methods.
METHOD_NAMES = {"frozen": "Frozen (head only)", "bitfit": "BitFit", "full": "Full FT", "lora": "LoRA",
                "beft": "BEFT (value)", "beft_all": "BEFT (every Linear)"}


def lr_text(rate: float) -> str:
    """A learning rate as people write it: 0.001 -> 1e-3, 5e-05 -> 5e-5, 0.01 -> 1e-2."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def kept_text(label: str, trainer, seconds: float) -> str:
    """02's line on a finished run: its rate and epochs, the epoch it kept, dev there, and its wall time."""
    from lab.models import get_device
    from lab.training import kept_row

    kept, args = kept_row(trainer), trainer.args
    return (f"{label}, lr {lr_text(args.learning_rate)}, at most {args.num_train_epochs:g} epochs: kept epoch "
            f"{kept.name:g} (validation MCC {kept['eval_validation_mcc']:.3f}). Dev at that epoch: accuracy "
            f"{100 * kept['eval_dev_accuracy']:.1f}, F1 {100 * kept['eval_dev_f1']:.1f}. "
            f"{seconds:.0f} s on this {get_device().type}, evaluations included.")


def study_settings(results_dir: str | os.PathLike = "results") -> dict[str, tuple[float, int]]:
    """The study's chosen ``(learning rate, max epochs)`` per method; ``{}`` before any grid is complete.

    The rate is the grid trial marked ``chosen`` in ``grid.csv`` (chosen on validation MCC); the
    maximum epochs come from ``methods.csv`` (``max_epochs``), else from ``DEFAULT_SETTINGS``.
    """
    import pandas as pd

    folder = Path(results_dir)
    if not (folder / "grid.csv").is_file():
        return {}
    grid = pd.read_csv(folder / "grid.csv")
    chosen = grid[grid["chosen"].astype(str).str.lower() == "true"]
    max_epochs: dict[str, int] = {}
    if (folder / "methods.csv").is_file():
        table = pd.read_csv(folder / "methods.csv")
        max_epochs = {m: int(e) for m, e in zip(table["method"], table["max_epochs"])}
    settings = {}
    for method, rate in zip(chosen["method"], chosen["lr"]):
        epochs = max_epochs.get(method) or DEFAULT_SETTINGS.get(method, (None, None))[1]
        if epochs:
            settings[method] = (float(rate), int(epochs))
    return settings


def settings_note(settings: dict[str, tuple[float, int]], chosen: dict[str, tuple[float, int]],
                  results_dir: str | os.PathLike = "results") -> str:
    """One line per method: its rate and max epochs, and where they come from."""
    lines = []
    for method, (rate, epochs) in settings.items():
        source = (f"the study's choice ({Path(results_dir) / 'grid.csv'})" if chosen.get(method) == (rate, epochs)
                  else "this notebook's default: the study has not chosen one yet")
        lines.append(f"  {METHOD_NAMES.get(method, method):<20} lr {lr_text(rate)}, at most {epochs} epochs  "
                     f"<- {source}")
    return "\n".join(lines)


def headline(results_dir: str | os.PathLike = "results"):
    """The study's headline table (``methods.csv``) in the notebook's words, or None when it is not there."""
    import pandas as pd

    path = Path(results_dir) / "methods.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, index_col="method")
    shown = pd.DataFrame({
        "lr": [lr_text(r) for r in table["lr"]], "max epochs": table["max_epochs"],
        "kept epochs (per seed)": table["kept_epochs"].astype(str), "trainable %": table["trainable_pct"].round(3),
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


def _mean_dev_mcc(folder: Path, method: str) -> float | None:
    """Mean dev MCC at the kept epoch of ``method``'s reported runs in ``runs.csv`` (None when not there)."""
    import pandas as pd

    path = folder / "runs.csv"
    if not path.is_file():
        return None
    runs = pd.read_csv(path)
    chosen = runs[(runs["method"] == method) & runs["part"].isin(["grid", "seeds"])]
    if (folder / "methods.csv").is_file():
        lr = pd.read_csv(folder / "methods.csv", index_col="method")["lr"].get(method)
        chosen = chosen[chosen["lr"] == lr]
    return float(chosen["dev_mcc"].mean()) if len(chosen) else None


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if std == std else f"{mean:.1f}"


def _spread(std: float, seeds: int) -> str:
    return f"標準差 {std:.1f}，{seeds} 個 seed" if std == std else f"{seeds} 個 seed，還沒有標準差"


def headline_sentences(results_dir: str | os.PathLike, majority_accuracy: float, dev_pairs: int) -> list[str]:
    """Three to five sentences of what the study's headline table shows, built from its numbers.

    Args:
        majority_accuracy: dev accuracy (%) of predicting the majority class for every pair.
        dev_pairs: pairs in GLUE dev (one pair is ``100 / dev_pairs`` points).
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
    said = [f"規則（protocol 2）：每個方法{trials}依**驗證集 MCC** 挑學習率與 epoch，dev 只在挑定的那一點量一次；"
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


def tta_sentences(results_dir: str | os.PathLike = "results") -> list[str]:
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

    said = [f"在這台 CPU 上各自單獨訓練一次（{b['device']}，{b['threads']} 個執行緒，torch {b['torch']}）。"]
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


def same_recipe_seeds(results_dir: str | os.PathLike, table) -> dict[str, list[float]]:
    """The study's dev accuracy per seed for each row of ``table`` that ran the study's recipe.

    A row is the study's recipe when it has the study's chosen rate and most epochs and as many trainable
    parameters (so the same model). Rows of the demo, quick mode or another model match nothing.

    Args:
        table: 02's section 6 table (:func:`comparison_table`).

    Returns:
        ``{name in the table: [dev accuracy of every study seed]}``; ``{}`` before ``methods.csv`` exists.
    """
    import pandas as pd

    path = Path(results_dir) / "methods.csv"
    if not path.is_file():
        return {}
    study = pd.read_csv(path, index_col="method")
    found = {}
    for method, name in METHOD_NAMES.items():
        if method in study.index and name in table.index:
            s, row = study.loc[method], table.loc[name]
            if (lr_text(float(s.lr)), int(s.max_epochs), int(s.trainable)) == (row.lr, int(row.max_epochs),
                                                                                 int(row.trainable)):
                found[name] = [float(a) for a in str(s.acc_per_seed).split()]
    return found


def _placed(value: float, seeds: list[float]) -> str:
    where = "在" if min(seeds) <= round(value, 1) <= max(seeds) else "低於" if value < min(seeds) else "高於"
    return f"{value:.1f}，{where}研究同一設定 {len(seeds)} 個 seed 的範圍（{min(seeds):.1f}–{max(seeds):.1f}）"


def this_run_sentences(table, majority_accuracy: float, dev_pairs: int,
                       results_dir: str | os.PathLike | None = None) -> list[str]:
    """What 02's own comparison (one seed, one run) shows, from its table and, when given, the study's seeds.

    Args:
        table: one row per method (index: ``METHOD_NAMES`` values) with columns ``lr``, ``max_epochs``,
            ``steps``, ``kept_epoch``, ``trainable``, ``dev_accuracy``, ``train_s``.
        results_dir: the study's tables: this run's scores are placed among the study's seeds of the same
            recipe (:func:`same_recipe_seeds`).
    """
    said = []
    steps = dict(zip(table.index, table["steps"]))
    epochs = dict(zip(table.index, table["max_epochs"]))
    if len(set(epochs.values())) > 1 or len(set(steps.values())) > 1:
        said.append("各方法的訓練量不同（" + "、".join(f"{m} 最多 {epochs[m]:g} 個 epoch、{steps[m]} 步" for m in table.index)
                    + "）：各自用它的設定，不是同樣的步數。")
    if {"BitFit", "Full FT"} <= set(table.index):
        b, f = table.loc["BitFit"], table.loc["Full FT"]
        gap = b.dev_accuracy - f.dev_accuracy
        said.append(f"這次執行（一個 seed）BitFit 的 dev accuracy {b.dev_accuracy:.1f}、Full FT {f.dev_accuracy:.1f}，"
                    f"差 {gap:+.1f} 分 = {abs(gap) * dev_pairs / 100:.0f} 對。")
        seeds = same_recipe_seeds(results_dir, table) if results_dir is not None else {}
        if {"BitFit", "Full FT"} <= set(seeds):
            study_gap = sum(seeds["BitFit"]) / len(seeds["BitFit"]) - sum(seeds["Full FT"]) / len(seeds["Full FT"])
            said.append(f"放進研究裡看：BitFit {_placed(b.dev_accuracy, seeds['BitFit'])}；Full FT "
                        f"{_placed(f.dev_accuracy, seeds['Full FT'])}。研究的平均差是 {study_gap:+.1f} 分（第 7 節）："
                        "一個 seed 的差距不代表兩個方法之間的差距。")
        else:
            said.append("一個 seed 的差距說不出哪個方法比較好：同樣調參、多個 seed 的結果在第 7 節。")
        said.append(f"訓練時間（不含評估）：BitFit {b.train_s:.0f} s（{b.train_s / b.max_epochs:.0f} s／epoch），"
                    f"Full FT {f.train_s:.0f} s（{f.train_s / f.max_epochs:.0f} s／epoch）。")
    if list(table.index) == ["BitFit"]:
        b = table.loc["BitFit"]
        said.append(f"只訓練了 BitFit（示範模式）：dev accuracy {b.dev_accuracy:.1f}，全部猜 equivalent 是 "
                    f"{majority_accuracy:.1f}，高出 {b.dev_accuracy - majority_accuracy:.1f} 分；和其他方法的比較看第 7 節的研究表。")
    if "Frozen (head only)" in table.index:
        z = table.loc["Frozen (head only)"]
        said.append(f"Frozen {z.dev_accuracy:.1f}，全部猜 equivalent 是 {majority_accuracy:.1f}："
                    + against_majority(z.dev_accuracy, majority_accuracy, z.get("validation_mcc"), 100 / dev_pairs,
                                       "validation"))
    return said


# ----- 02's run settings: the study's choice or the defaults, and what QUICK and DEMO change -------------------

#: The instructor demo on a CPU (``BITFIT_DEMO=1``): the offline model, half the pairs per step, BitFit at the
#: study's rate for 4 epochs (the fewest measured to leave the majority class), no Frozen and no Full FT (section 7
#: shows the study's), and bf16 autocast where the CPU computes bf16 in hardware. Designed for <= 6 minutes of 02
#: on a 2-core CPU (see ``run_settings``).
DEMO_CPU = {"batch_size": 16, "epochs": {"bitfit": 4}, "bitfit_lr": 1e-3, "section_6": [], "bf16": True}


@dataclass
class RunSettings:
    """What 02 trains: learning rate and most epochs per method, batch, training pairs, model; ``note`` says why."""

    lr: dict[str, float]
    epochs: dict[str, int]
    batch_size: int
    train_subset: int | None  # None: every training pair
    model_name: str | None
    section_6: list[str]  # trained in section 6 beside section 3's BitFit
    note: str
    bf16: bool = False  # bf16 autocast (mixed precision) for every training: the CPU demo, on a CPU with native bf16


def run_settings(quick: bool, demo: bool, model_name: str | None, device: str,
                 results_dir: str | os.PathLike = "results", batch_size: int = 32) -> RunSettings:
    """02's settings: the study's chosen (lr, max epochs) where it has chosen, else ``DEFAULT_SETTINGS``.

    ``quick`` (CI): 256 training pairs, one epoch each. ``demo`` on a CPU: ``DEMO_CPU``, with every
    trade printed in ``note``; on a GPU the demo changes nothing. The note names each setting's source.

    The demo's budget, from per-epoch times measured on an idle 2-core CPU with 2 threads (BitFit about
    65 s, Full FT about 100 s an epoch of MRPC train at batch 32): BitFit gets 4 epochs at batch 16 (828 steps),
    about the compute of 2 epochs at batch 32; Frozen and Full FT are left to the study's table. Why: BitFit on
    the offline MiniLM sits on the majority-class plateau for its first epochs (its pooler was never trained).
    Measured idle with ``benchmarks/time_demo.py`` (seed 42): 3 BitFit epochs at batch 16 plus 1 of Frozen took
    302 s, BitFit dev accuracy 71.3 (it left the plateau in epoch 3); 4 epochs at batch 32 took 384 s, BitFit
    still at the majority class (68.1). Runs of BitFit alone (seed 42, on a CPU shared with other jobs, so only
    their scores count) left it no sooner at lr 2e-3 (batch 16, 3 epochs: 69.6), 3e-3 (batch 32: 68.4), batch 8
    for 3 epochs (68.9), without warm-up (71.1), or with a head at lr 1e-2 beside biases at 1e-3 (seeds 42 and
    0: validation MCC about 0.2, dev 70.6 and 70.3); batch 16 for 4 epochs kept epoch 4 (validation MCC 0.45),
    dev accuracy 76.0. That design measured 346 s once, then 373 s and 380 s on later days (on the 373 s day the
    same idle VM ran 02's full BitFit at 78 s an epoch instead of 70 s): the margin to 6 minutes is within the
    CPU's own variation.
    Three cheaper designs failed the accuracy there (seed 42): batch 12 for 3 epochs (the same 828 steps, 288 s
    of training) kept dev 71.1, batch 16 for 4 epochs on 2,900 of the 3,301 pairs 66.7, and batch 16 for 3.5
    epochs (317 s of training) kept epoch 3, dev 71.1. Evaluation is not where the time goes: Trainer already
    groups the evaluation batches by length, and outside its training steps the study's BitFit
    time-to-accuracy run spent 57 of its 483 s (evaluations and loading, 6 epochs).
    What gave the margin is precision: on a CPU with bf16 instructions (AVX512-BF16 or AMX, ``cpu_has_native_bf16``)
    the demo trains under bf16 autocast (the weights stay float32). The same design, seed 42, alone on the idle VM
    (AVX512-BF16): ``trainer.train()`` took 261 s with its evaluations (float32, in the 380 s demo: 363 s), and kept
    epoch 4 with dev accuracy 76.0, as in float32; seed 0 also kept epoch 4, dev 75.7. On a CPU without those
    instructions the demo keeps float32, and its note says so.
    results/demo_cpu.json holds the latest measurement of the current design.
    """
    from lab.models import OFFLINE_MODEL, cpu_has_native_bf16

    chosen = study_settings(results_dir)
    settings = {m: chosen.get(m, DEFAULT_SETTINGS[m]) for m in ("bitfit", "frozen", "full")}
    lr = {m: rate for m, (rate, _) in settings.items()}
    epochs = {m: n for m, (_, n) in settings.items()}
    lines = ["Learning rate and most epochs per method:", settings_note(settings, chosen, results_dir)]
    subset, section_6, bf16 = None, ["frozen", "full"], False
    if quick:
        subset, epochs = 256, {m: 1 for m in epochs}
        lines.append(f"QUICK: {subset} training pairs, 1 epoch per method; the scores only show that the code runs.")
    elif demo and device != "cpu":
        lines.append("DEMO on a GPU: the settings above run unchanged (section 0 estimates their time here).")
    elif demo:
        model_name = model_name or OFFLINE_MODEL
        d = DEMO_CPU
        lines.append(
            f"DEMO on a CPU trades away: model {model_name}; "
            + (f"batch {d['batch_size']} instead of {batch_size}; " if d["batch_size"] != batch_size else "")
            + f"BitFit at lr {lr_text(d['bitfit_lr'])} for at most {d['epochs']['bitfit']} epochs (not {epochs['bitfit']}); "
            + ("Frozen and Full FT are not trained (section 7 shows the study's tuned ones; 03's section 6 needs the "
               "Frozen pack that only the full settings write). " if not d["section_6"] else "")
            + "One seed, fewer steps: lower and noisier scores than the full settings.")
        bf16 = d["bf16"] and cpu_has_native_bf16()
        if d["bf16"]:
            lines.append("DEMO precision: bf16 autocast instead of float32 (this CPU computes bf16 in hardware; the "
                         "weights stay float32)." if bf16 else "DEMO precision: float32 (this CPU has no bf16 "
                         "instructions, AVX512-BF16 or AMX, that would make bf16 autocast faster).")
        batch_size, section_6 = d["batch_size"], list(d["section_6"])
        epochs, lr = {**epochs, **d["epochs"]}, {**lr, "bitfit": d["bitfit_lr"]}
    return RunSettings(lr, epochs, batch_size, subset, model_name, section_6, "\n".join(lines), bf16)


def planned_trainings(run: RunSettings, train_pairs: int, eval_pairs: int):
    """02's trainings in order: section 3's BitFit, section 6's methods, exercise 3 (one BitFit epoch)."""
    from lab.training import plan_training

    n = run.train_subset or train_pairs
    return [plan_training("section 3: BitFit", "bitfit", n, run.batch_size, run.epochs["bitfit"], eval_pairs),
            *(plan_training(f"section 6: {METHOD_NAMES[m]}", m, n, run.batch_size, run.epochs[m], eval_pairs)
              for m in run.section_6),
            plan_training("exercise 3", "bitfit", n, run.batch_size, 1, eval_pairs)]


def comparison_table(trainers: dict, run: RunSettings):
    """02's section 6: one row per trained method, its settings and its scores at the kept epoch."""
    import pandas as pd

    from bitfit_utils import count_parameters
    from lab.training import history_frame, kept_row

    rows = []
    for method, trainer in trainers.items():
        row, (trainable, total) = kept_row(trainer), count_parameters(trainer.model)
        rows.append({"method": METHOD_NAMES[method], "lr": lr_text(run.lr[method]), "max_epochs": run.epochs[method],
                     "steps": trainer.state.global_step, "kept_epoch": row.name, "trainable": trainable,
                     "trainable_%": 100 * trainable / total, "validation_mcc": row["eval_validation_mcc"],
                     "dev_accuracy": 100 * row["eval_dev_accuracy"], "dev_f1": 100 * row["eval_dev_f1"],
                     "train_s": history_frame(trainer)["train_seconds"].iloc[-1]})
    return pd.DataFrame(rows).set_index("method")


def exercise_3_text(costs, run: RunSettings, splits, model_name: str, bitfit_run) -> str:
    """What 02's exercise 3 is compared with, and how long its one epoch takes here (from section 0's costs).

    ``bitfit_run`` is section 3's trainer, or the path of its pack after a kernel restart.
    """
    from lab.training import estimate_trainings

    eval_pairs = len(splits["validation"]) + len(splits["dev"])
    seconds = estimate_trainings(costs, planned_trainings(run, len(splits["train"]), eval_pairs))["exercise 3"]
    compared_with = str(bitfit_run) if isinstance(bitfit_run, (str, os.PathLike)) else "section 3"
    return (f"Exercise 3 is compared with {compared_with}; it trains one epoch: about {seconds / 60:.1f} min "
            f"with {model_name} on this {costs.device}.")
