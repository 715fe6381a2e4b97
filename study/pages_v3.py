"""Protocol 3's block of results/README.md, built from ``results/v3`` (``python -m study.pages`` calls it)."""

from __future__ import annotations

import json
from pathlib import Path

from lab.registry import HEADLINE, METHODS
from lab.selection import MAX_EPOCHS, PATIENCE
from lab.tasks import TASKS
from study.page_inputs import csv, grid_edge, md

NOT_YET = "（還沒有：這一部分的 run 還在跑。）"


def v3_progress(folder: Path) -> str:
    """How far protocol 3 is: runs done of those planned, machine hours so far, the head chosen."""
    from study.run import choose_head, plan, read_runs, retired_runs, spent_hours

    runs = read_runs(folder)
    if not runs:
        return "協定 3 還沒有完成的 run。"
    done = {r["name"] for r in runs}
    planned = plan(runs)
    left = [s for s in planned if s["name"] not in done]
    hours = "、".join(f"{d} {h:.1f} 機器小時" for d, h in sorted(spent_hours(folder).items()))
    head = choose_head(runs)
    cut = sorted(r["name"] for r in retired_runs(folder))
    redo = (f"上限從 20 提高到 {MAX_EPOCHS} 之後，被舊上限截斷的 run 重跑（{'、'.join(cut)}；舊的留在 `runs/retired/`，"
            "時間算在內）；在舊上限前就停下的 run 不受上限影響，照舊算。") if cut else ""
    status = (f"**進行中**：完成 {len(runs)} 個 run，計畫中還有 {len(left)} 個（`python -m study.run --plan` 列出每一個與估計時間）；"
              if left else f"**完成**：計畫中的 {len(runs)} 個 run 都跑完了；")
    return (status + f"{'目前' if left else '共'}用了 {hours}。分類頭：{head or '還沒決定'}。" + redo + budget_sentence(folder))


def budget_sentence(folder: Path) -> str:
    """Each stage's machine hours (spent + left) against its budget and, where over, the runs that cost most."""
    from study.p2_protocol import machine_seconds
    from study.run import estimate, read_runs, retired_runs, stage_of

    _, stages = estimate(folder)
    names = {"mrpc": "MRPC", "tasks": "其他任務"}
    said = []
    for stage, v in stages.items():
        total = v["spent"] + v["left"]
        line = f"{names[stage]} {v['budget']:g} 機器小時，已用 {v['spent']:.1f}、估計還要 {v['left']:.1f}，共 {total:.1f}"
        if total > v["budget"]:
            runs = [(r, "") for r in read_runs(folder)] + [(r, "，舊上限下的一次") for r in retired_runs(folder)]
            top = sorted((x for x in runs if stage_of(x[0]) == stage and not x[0].get("quick")),
                         key=lambda x: machine_seconds(x[0]), reverse=True)[:3]
            line += f"，超出 {total - v['budget']:.1f}：停止規則沒有低上限，學得慢的組合就跑得久"
            line += ("（最久的 " + "；".join(f"{r['name']}：{int(r['last_epoch'])} 個 epoch，"
                                           f"{machine_seconds(r) / 3600:.1f} 小時{old}" for r, old in top) + "）"
                     if top else "（這部分還沒有跑完的 run：用 MRPC 各方法每個 epoch 的花費與 epoch 數估計的）")
            line += "；研究照樣跑完"
        said.append(line)
    return "預算：" + "；".join(said) + "。"


def _kept_at_cap(folder: Path) -> str:
    methods = csv(folder / "methods.csv", "method")
    if methods is None:
        return ""
    hit = [f"{m} {int(r.kept_at_cap)}/{int(r.seeds)}" for m, r in methods.iterrows()]
    return f"留下的 epoch 碰到上限（{MAX_EPOCHS}）的 run：" + "、".join(hit) + "。"


def complete_methods(folder: Path) -> list[str]:
    """The methods of ``methods.csv`` whose planned reported seeds are all in, in the table's order."""
    methods = csv(folder / "methods.csv", "method")
    return [] if methods is None else [m for m in methods.index if methods.seeds[m] >= methods["of"][m]]


def tta_summary(folder: Path) -> dict[str, dict[str, float]] | None:
    """``study.report.tta_ratios`` per target once BitFit and Full FT have all their seeds; None before."""
    from study.report import tta_ratios

    tta = csv(folder / "tta.csv", "method")
    if tta is None or not {"bitfit", "full"} <= set(complete_methods(folder)):
        return None
    rows = tta.reset_index().to_dict("records")
    return {t: tta_ratios(rows, t) for t in ("majority_plus_5", "full_ft_median_best")}


def v3_caveats(folder: Path) -> str | None:
    """What protocol 3 cannot rule out, computed from its tables: a chosen rate at the edge of its grid, a run
    the cap stopped while it might still improve, and the head read through an untrained pooler."""
    from study.run import choose_head, read_runs

    grid, runs = csv(folder / "grid.csv", "method"), csv(folder / "runs.csv", "name")
    lines = []
    if grid is not None:
        for method, rows in grid.groupby(level=0):
            if note := grid_edge(rows):
                lines.append(f"* `{method}`：{note}。")
    if runs is not None:
        runs = runs[(runs.part != "cost") & ~runs.quick.astype(bool)]
        capped = runs[(runs.last_epoch >= runs.max_epochs) & (runs.last_epoch - runs.kept_epoch < PATIENCE)]
        for name, r in capped.iterrows():
            lines.append(f"* `{name}` 被上限（{int(r.max_epochs)} 個 epoch）停下：留下第 {int(r.kept_epoch)} 個 epoch，"
                         f"離最後一個不到 {PATIENCE} 個，validation 也許還會進步。")
    head = choose_head(read_runs(folder))
    if head == "cls":
        lines.append("* 分類頭是 [CLS] 經過 pooler；離線 MiniLM 的 pooler 從未訓練過（權重是隨機的），所以除了 Full FT，"
                     "每個方法都透過這個凍結的隨機投影讀 [CLS]（BitFit 只調得到它的偏置）。這個頭在網格前以 validation MCC "
                     "勝過 mean pooling（上面第一張表），換一個預訓練過 pooler 的模型（BERT-base），結果可能不同。")
    if not lines:
        return None
    return "\n".join(["協定 3 沒排除的可能（由本節的表算出）：", "", *lines])


def rule_sentence(folder: Path) -> str:
    """Protocol 3's rule, with the seeds per method and the precision read from the registry and the run files."""
    runs = csv(folder / "runs.csv", "name")
    precision = sorted(set(runs.precision)) if runs is not None and "precision" in runs else []
    seeds = {}
    for m in HEADLINE:
        seeds.setdefault(METHODS[m].seeds, []).append(METHODS[m].label or m)
    counts = "；".join(f"{'、'.join(labels)} 各 {n} 個" for n, labels in sorted(seeds.items(), reverse=True))
    return (f"規則：每個方法訓練到 validation MCC 連續 {PATIENCE} 個 epoch 沒有進步為止（還停在多數類、MCC 0 時不計），"
            f"上限 {MAX_EPOCHS} 個 epoch；學習率網格只用 seed 0 挑，回報 seed 1 起（{counts}）；"
            "分類頭在網格前用 BitFit 三個 seed 的 validation MCC 決定；"
            + (f"精度：{'、'.join(precision)}（每個 run 檔的 `precision`）。" if precision else "")
            + "每個 run 每個 epoch 存一次檢查點（`results/v3/partial/`，不進 git），中斷的 run 下次從最後存下的 epoch 接著跑，"
            "結果與沒中斷的 run 每個張量都相同（`tests/test_training.py`）；run 檔的 `pieces` 記下它分幾段、在哪個 commit 跑。")


def tasks_sentence() -> str:
    """How the other tasks are run: their training sets, seeds and rates, and why (``study.run``'s settings)."""
    from study.run import TASK_METHODS, TASK_SEEDS, TASK_STUDY

    sizes = "、".join(f"{TASKS[t].title} " + (f"從訓練集抽 {n:,} 個例子（分層抽樣，每個方法、每個 seed 同一批，"
                                               "讓一個 epoch 的花費接近 MRPC 的；validation 也從這些裡切出，"
                                               "表中的 train_examples 是剩下的訓練例）" if n else "用整個訓練集")
                     for t, n in TASK_STUDY.items())
    methods = "、".join(METHODS[m].label or m for m in TASK_METHODS)
    return (f"其他任務：{sizes}；{methods} 各跑 seed 1–{TASK_SEEDS}，用 MRPC 選出的分類頭與學習率，不另跑格點"
            "（每個任務各跑一個格點會讓 run 數變成三倍，超過這部分 4 機器小時的預算）；validation 一樣從訓練集切出、"
            "一樣的停止規則。表中的分數是每個任務自己的 GLUE 指標（CoLA 用 MCC）。")


def v3_block(results: Path) -> str:
    """Protocol 3's rule, progress and every table it has so far."""
    folder = results / "v3"
    out = [rule_sentence(folder), "", v3_progress(folder), ""]
    for title, name in (("分類頭的決定（只看 validation MCC）", "head.md"), ("格點（seed 0，只有 validation）", "grid.md"),
                        ("主要方法（seed 1 起；dev 在留下的 epoch）", "methods.md"), ("time-to-accuracy（每個 seed）", "tta.md"),
                        ("其他任務（MRPC 的頭與學習率）", "tasks.md"), ("各任務動得最多的偏置組", "consistency.md")):
        out += [f"#### {title}", ""] + ([tasks_sentence(), ""] if name == "tasks.md" else []) + \
            [md(folder / name) or NOT_YET, ""]
    cap = _kept_at_cap(folder)
    if cap:
        out += [cap, ""]
    caveats = v3_caveats(folder)
    if caveats:
        out += [caveats, ""]
    recipe = folder / "recipe.json"
    if recipe.is_file():
        chosen = json.loads(recipe.read_text(encoding="utf-8"))["methods"]
        out += ["02 用的配方（`recipe.json`）：" + "、".join(f"{m} lr {c['lr']:g}" for m, c in chosen.items()) + "。", ""]
    return "\n".join(out).rstrip() + "\n"
