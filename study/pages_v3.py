"""Protocol 3's block of results/README.md, built from ``results/v3`` (``python -m study.pages`` calls it)."""

from __future__ import annotations

import json
from pathlib import Path

from lab.selection import MAX_EPOCHS, PATIENCE
from study.page_inputs import csv, md

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
    return (f"**進行中**：完成 {len(runs)} 個 run，計畫中還有 {len(left)} 個（`python -m study.run --plan` 列出每一個與估計時間）；"
            f"目前用了 {hours}。分類頭：{head or '還沒決定'}。" + redo)


def _kept_at_cap(folder: Path) -> str:
    methods = csv(folder / "methods.csv", "method")
    if methods is None:
        return ""
    hit = [f"{m} {int(r.kept_at_cap)}/{int(r.seeds)}" for m, r in methods.iterrows()]
    return f"留下的 epoch 碰到上限（{MAX_EPOCHS}）的 run：" + "、".join(hit) + "。"


def v3_block(results: Path) -> str:
    """Protocol 3's rule, progress and every table it has so far."""
    folder = results / "v3"
    out = [f"規則：每個方法訓練到 validation MCC 連續 {PATIENCE} 個 epoch 沒有進步為止（還停在多數類、MCC 0 時不計），"
           f"上限 {MAX_EPOCHS} 個 epoch；學習率網格只用 seed 0 挑，回報 seed 1 起（BitFit、Full FT、LoRA 5 個，其他 3 個）；"
           "分類頭在網格前用 BitFit 三個 seed 的 validation MCC 決定；全部 float32。"
           "每個 run 每個 epoch 存一次檢查點（`results/v3/partial/`，不進 git），中斷的 run 下次從最後存下的 epoch 接著跑，"
           "結果與沒中斷的 run 每個張量都相同（`tests/test_training.py`）；run 檔的 `pieces` 記下它分幾段、在哪個 commit 跑。", "", v3_progress(folder), ""]
    for title, name in (("分類頭的決定（只看 validation MCC）", "head.md"), ("格點（seed 0，只有 validation）", "grid.md"),
                        ("主要方法（seed 1 起；dev 在留下的 epoch）", "methods.md"), ("time-to-accuracy（每個 seed）", "tta.md"),
                        ("其他任務：SST-2、CoLA（MRPC 的頭與學習率，seed 1–3）", "tasks.md"),
                        ("各任務動得最多的偏置組", "consistency.md")):
        out += [f"#### {title}", "", md(folder / name) or NOT_YET, ""]
    cap = _kept_at_cap(folder)
    if cap:
        out += [cap, ""]
    recipe = folder / "recipe.json"
    if recipe.is_file():
        chosen = json.loads(recipe.read_text(encoding="utf-8"))["methods"]
        out += ["02 用的配方（`recipe.json`）：" + "、".join(f"{m} lr {c['lr']:g}" for m, c in chosen.items()) + "。", ""]
    return "\n".join(out).rstrip() + "\n"
