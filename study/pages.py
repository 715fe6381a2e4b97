"""Write the generated parts of README.md and results/README.md from the files in results/.

Every table, plot reference and number inside a generated block is read or computed from results/
(the study's run files and tables, the benchmark outputs); nothing in them is typed by hand. A block
sits between two marker comments, so the hand-written prose around it survives a rewrite::

    <!-- generated:NAME (python -m study.pages) -->
    ...
    <!-- /generated:NAME -->

Blocks of results/README.md: ``study-design`` (the rule's grids and seeds, from ``lab.registry.METHODS``),
``study-progress`` (runs done of the plan), ``study-results`` (grid, methods, ablations, time-to-accuracy
and the plot, where written), ``v1`` (the old study's curve and groups, labelled with their rule),
``perf`` (benchmarks/bench_bitfit.py's outputs, ``study.pages_perf``) and ``claims`` (the handout's claims, checked).
Blocks of README.md: ``summary``, ``demo`` (benchmarks/time_demo.py's measurement of the instructor demo).

    python -m study.pages            # rewrite both files
    python -m study.pages --check    # exit 1 if either is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path

from lab.registry import HEADLINE, METHODS
from study import p2_protocol as p2
from study.page_inputs import P2_RULE_ZH, V1_RULE, bench, csv, grid_edge, machine, md
from study.pages_perf import claims_block, perf_block
from study.pages_v3 import complete_methods, tta_summary, v3_block

ROOT = Path(__file__).resolve().parents[1]

# The v1 seed-0 run files predate the device and version fields: this is where they ran.
V1_CPU_MACHINE = "一台 2 核 x86-64 CPU（無 GPU、torch 2.13.0 CPU 版、transformers 5.24.0）"
PAGES = ("README.md", "results/README.md")


# ----- markers -------------------------------------------------------------------------


def begin(name: str) -> str:
    return f"<!-- generated:{name} (python -m study.pages) -->"


def end(name: str) -> str:
    return f"<!-- /generated:{name} -->"


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` holding ``body`` (both markers must be there already)."""
    pattern = re.compile(re.escape(begin(name)) + r"\n.*?" + re.escape(end(name)), re.S)
    if not pattern.search(text):
        raise ValueError(f"no block {name!r}: add the lines {begin(name)} and {end(name)}")
    return pattern.sub(lambda _: f"{begin(name)}\n{body.rstrip()}\n{end(name)}", text, count=1)


# ----- results/README.md: the study (protocol 2) ------------------------------------------


def _lrs(lrs) -> str:
    return "、".join(f"{lr:g}" for lr in lrs)


def study_design(results: Path) -> str:
    """The grids, budgets and seeds of every method, from the registry, lab.registry.METHODS and plan()."""
    from lab.data import VALIDATION_SEED, VALIDATION_SHARE

    planned = p2.plan([])
    count = Counter((s["part"], s["method"]) for s in planned)
    lines = ["| 方法 | 學習率格點（seed 0） | 最多 epoch | 選定後的 seed 數 | 理由（`METHODS` 的 `why`） |",
             "|---|---|---:|---:|---|"]
    for name, spec in METHODS.items():
        if spec.parent:
            grid, seeds = f"沿用 `{spec.parent}` 選定的學習率", count["ablation", name]
        else:
            grid, seeds = _lrs(spec.lrs), 1 + count["seeds", name]
        lines.append(f"| `{name}` | {grid} | {spec.epochs} | {seeds} | {spec.why} |")
    parts = Counter(s["part"] for s in planned)
    headline = "、".join(f"`{m}`" for m in HEADLINE)
    return "\n".join([
        f"驗證集：從 MRPC 訓練集分層抽出 {100 * VALIDATION_SHARE:g} %（seed {VALIDATION_SEED}）；批次 {p2.BATCH_SIZE}。"
        f"主要方法（{headline}）每個都是 {len(METHODS[HEADLINE[0]].lrs)} 個學習率、各一個 run，"
        "選定之後再補 seed；消融（下表沒有格點的列）沿用它所改動的方法選定的學習率，不另外調。",
        "",
        *lines,
        "",
        f"整個協定共 {len(planned)} 個 run：格點 {parts['grid']}、選定後補的 seed {parts['seeds']}、"
        f"消融 {parts['ablation']}、time-to-accuracy {parts['tta']}"
        f"（{'、'.join(f'`{m}`' for m in p2.TTA_METHODS)} 在選定設定下各一個 run，"
        "其他 run 都結束之後才一次一個單獨跑，時間才能比）。",
    ])


def _where(runs: list[dict]) -> str:
    """Where a set of runs ran, from their files: device, threads, runs side by side, versions."""
    groups = Counter((r["device"], r.get("threads"), r.get("concurrent_runs"), r.get("torch"),
                      r.get("transformers")) for r in runs)
    return "；".join(
        f"{n} 個在 {'CPU' if device == 'cpu' else device} 上（每個 run {threads} 個執行緒、同時 {jobs} 個 run；"
        f"torch {torch}、transformers {tf}）" for (device, threads, jobs, torch, tf), n in sorted(
            groups.items(), key=lambda kv: -kv[1]))


def study_progress(results: Path) -> str:
    results = results / "v2"
    runs = p2.read_runs(results)
    planned = p2.plan(runs)
    done = {r["name"] for r in runs}
    labels = {"grid": "格點", "seeds": "補 seed", "ablation": "消融", "tta": "time-to-accuracy"}
    per_part = "、".join(f"{label} {sum(s['name'] in done for s in planned if s['part'] == part)}/"
                        f"{sum(s['part'] == part for s in planned)}" for part, label in labels.items())
    n_done = sum(s["name"] in done for s in planned)
    head = ("**全部 run 已完成**" if n_done == len(planned) else f"**已完成 {n_done} / {len(planned)} 個 run**")
    text = f"{head}（{per_part}；依 `results/v2/runs/` 裡的 run 檔計算）。"
    if runs:
        commits = sorted({re.sub(r"^([0-9a-f]{7})[0-9a-f]*", r"\1", r.get("commit", "?")) for r in runs})
        spent = "、".join(f"{d} {h:.1f} 小時" for d, h in sorted(p2.machine_hours(runs).items()))
        text += (f"完成的 run：{_where(runs)}。程式版本（commit）：{'、'.join(commits)}。用掉的機器時間（每個 run 的 wall time "
                 f"除以同時共用機器的 run 數）：{spent}。")
    else:
        text += "還沒有任何 run 完成。"
    if n_done < len(planned):
        text += "每個 run 的狀態與剩下的 CPU 時間估計：`python -m study.p2_run --plan`。"
    return text


NOT_YET = "這部分的 run 還沒跑完，表格尚未產生。"


def grid_caveats(results: Path) -> str | None:
    """What the grid cannot rule out, read from grid.csv and methods.csv: a chosen rate at the edge of its
    grid (a rate beyond it was never tried) and a chosen setting whose best epoch is its last (more epochs
    were never tried). None when there is nothing to say or no grid yet."""
    grid, methods = csv(results / "v2" / "grid.csv", "method"), csv(results / "v2" / "methods.csv", "method")
    if grid is None:
        return None
    lines = []
    for method, rows in grid.groupby(level=0):
        if rows[rows.chosen.astype(bool)].empty:
            continue
        notes = [note] if (note := grid_edge(rows)) else []
        if methods is not None and method in methods.index:
            kept = [float(k) for k in str(methods.loc[method, "kept_epochs"]).split()]
            most = float(methods.loc[method, "max_epochs"])
            last = sum(k == most for k in kept)
            if last:
                notes.append(f"{len(kept)} 個 seed 中有 {last} 個留下的是最後一個 epoch（第 {most:g} 個），"
                             "更多 epoch 沒有試過")
        if notes:
            lines.append(f"* `{method}`：" + "；".join(notes) + "。")
    if not lines:
        return None
    return "\n".join(["格點沒排除的可能（由上表與下表算出；協定不延伸格點，所以只在這裡註明）：", "", *lines])


def study_results(results: Path) -> str:
    """The study's tables and plot where --report has written them; a plain sentence where not."""
    caveats, results = grid_caveats(results), results / "v2"
    out = ["#### 格點：每個學習率在 validation 上的分數", "",
           "選擇只看這張表：每個 run 在 validation MCC 最好的 epoch（`kept_epoch`）的 validation 分數；"
           "`chosen` 標出每個方法選定的學習率（格點跑完才會選）。", "",
           md(results / "grid.md") or NOT_YET, ""]
    out += [caveats, ""] if caveats else []
    out += ["#### 主要方法：選定設定下的 dev 分數", "",
           "dev accuracy／F1（%）在選定的學習率、每個 seed 自己在 validation 上選定的 epoch（`kept_epochs` 依 seed 列出）；"
           "平均 ± 標準差跨 seed，`acc_per_seed` 列出每個 seed。", "",
           md(results / "methods.md") or NOT_YET]
    if (results / "methods.png").exists():
        out += ["", "![各方法的 dev accuracy 與 F1：每個 seed 一點、橫線為平均、紅線為全部猜 equivalent](v2/methods.png)"]
    out += ["", "#### 消融：在母方法選定的設定下", "", md(results / "ablations.md") or NOT_YET, "",
            "#### time-to-accuracy：BitFit 與 Full FT 要訓練多久", "",
            "兩個 run 各自單獨執行，從每個 epoch 的紀錄讀出累積訓練秒數，直到 validation accuracy 第一次達到"
            "（a）`majority_plus_5`：多數類比例加 5 個百分點；（b）`full_ft_best`：Full FT 在 validation 上的最好成績。"
            "`ratio` = BitFit 秒數 / Full FT 秒數；從沒達到時為「–」。", ""]
    tta = md(results / "tta.md")
    if tta:
        runs = [r for r in p2.read_runs(results) if r["part"] == "tta"]
        from lab.study import tta_sentences

        out += [tta, "", f"這兩個 run：{_where(runs)}。", ""] + [f"* {s}" for s in tta_sentences(results)[1:]]
    else:
        out.append(NOT_YET)
    return "\n".join(out)


# ----- results/README.md: the old study (v1) ---------------------------------------------


def gpu_walls(log: Path) -> list[tuple[str, str, str]]:
    """(device, runs, seconds) per GPU in results/v1/gpu_study.txt ('## <device>: ...' then 'study: N runs in S s')."""
    found, device = [], None
    for text in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        if text.startswith("## "):
            device = text[3:].split(":")[0]
        elif match := re.fullmatch(r"study: (\d+) runs in (\d+) s", text):
            found.append((device, *match.groups()))
    return found


def v1_block(results: Path) -> str:
    v1 = results / "v1"
    runs = csv(v1 / "runs.csv", "name")
    if runs is None:
        return "`results/v1/` 不在，沒有舊研究可列。"
    settings = runs[runs.part.isin(["curve", "groups"])].groupby("method")[["lr", "epochs"]].first()
    recipe = "；".join(f"`{m}` 學習率 {row.lr:g}、{int(row.epochs)} 個 epoch" for m, row in settings.iterrows())
    shown = runs[runs.part.isin(["curve", "groups"]) | (runs.part.eq("main") & runs.method.isin(settings.index))]
    cpu, gpu = shown[shown.device == "cpu"], shown[shown.device != "cpu"]
    walls = "、".join(f"{d} 上 {n} 個 run 花 {s} 秒" for d, n, s in gpu_walls(v1 / "gpu_study.txt"))
    where = f"下面兩張表的 {len(shown)} 個 run 中，{len(cpu)} 個在{V1_CPU_MACHINE}上一次跑一個"
    if len(gpu):
        where += (f"；{len(gpu)} 個在 GPU（{'、'.join(sorted(set(gpu.device)))}）上同時跑 "
                  f"{'、'.join(map(str, sorted(set(gpu.concurrent_runs))))} 個"
                  + (f"（整個 v1 的 GPU 部分：{walls}；`results/v1/gpu_study.txt`）" if walls else ""))
    fractions = "／".join(f"{100 * f:g} %" for f in sorted(set(runs[runs.part == "curve"].fraction) | {1.0}))
    out = [f"> **{V1_RULE}。** 每個方法只有一組固定的學習率與 epoch 數，每個 run 保留 dev F1 最好的 epoch，報告的也是"
           "同一個 dev；F1 又是多數類也能拿高分的指標（全部猜 equivalent 的 F1 見下表 `key`、`query` 列）。所以這裡的數字偏樂觀，"
           "只能在 v1 內部互相比較，不能和上面協定 2 的表格並列。",
           "", f"設定：{recipe}；每個（方法、seed、訓練集比例）一個 run，seed {'、'.join(map(str, sorted(set(runs.seed))))}。"
           f"{where}。"]
    curve = md(v1 / "curve.md")
    if curve:
        out += ["", f"#### v1：訓練集大小曲線（BitFit 與 Full FT，訓練集取 {fractions}）", "",
                f"**{V1_RULE}。** dev 分數（%），平均 ± 標準差跨 seed。", "", curve]
        if (v1 / "curve.png").exists():
            out += ["", "![v1 訓練集大小曲線（dev，在 dev 上以 F1 選 epoch）](v1/curve.png)"]
    groups = md(v1 / "groups.md")
    if groups:
        out += ["", "#### v1：一次只訓練一組偏置（＋分類頭），依 dev F1 排序", "",
                f"**{V1_RULE}。** 與 03 的偏置變化量熱圖對照。", "", groups]
    return "\n".join(out)


# ----- README.md: the summary ----------------------------------------------------------------


#: Protocol 2's rule, said wherever one of its numbers is shown (protocol 3 replaces them when it is done).


#: The end of the summary's protocol 3 line while protocol 2's line below still shows some methods.
P2_TAIL = "其他的，在它跑完之前，是下面協定 2 的數字。"


def v3_complete_methods(folder: Path) -> str:
    """Protocol 3's numbers for the methods whose reported seeds are all in (dev accuracy, and BitFit / Full FT
    time-to-accuracy once both are complete); ``""`` while none is."""
    done = complete_methods(folder)
    if not done:
        return ""
    methods = csv(folder / "methods.csv", "method")
    said = ("跑完全部 seed 的（dev accuracy 平均 ± 標準差）：" + "；".join(
        f"`{m}` {methods.acc_mean[m]:.1f} ± {methods.acc_std[m]:.1f}（{int(methods.seeds[m])} 個 seed）" for m in done) + "。")
    r = tta_summary(folder)
    if r is not None:
        span = lambda t: f"{r[t]['median_ratio']:.2f}（各 seed {r[t]['min_ratio']:.2f}–{r[t]['max_ratio']:.2f}）"  # noqa: E731
        said += (f"到同一 validation 成績的訓練時間 BitFit / Full FT：多數類加 5 分 {span('majority_plus_5')}，"
                 f"Full FT 的最好成績 {span('full_ft_median_best')}。")
    return said


def summary_block(results: Path) -> str:
    from lab.selection import MAX_EPOCHS
    from study.run import plan, read_runs, spent_hours

    v3 = read_runs(results / "v3")
    hours = sum(spent_hours(results / "v3").values())
    n_planned = len(plan(v3))
    status = f"進行中，完成 {len(v3)} / {n_planned} 個 run" if len(v3) < n_planned else f"完成，全部 {n_planned} 個 run"
    out = [f"* **方法比較，協定 3**（訓練到 validation MCC 不再進步，上限 {MAX_EPOCHS} 個 epoch；seed 0 只挑學習率）："
           f"{status}（{hours:.1f} 機器小時），表格在 results/README.md 第 0 節。"
           + v3_complete_methods(results / "v3")]
    runs = p2.read_runs(results / "v2")
    planned = p2.plan(runs)
    done = {r["name"] for r in runs}
    n_done = sum(s["name"] in done for s in planned)
    methods = csv(results / "v2" / "methods.csv", "method")
    if methods is not None:  # the methods protocol 3 has not finished yet
        v3_done = set(complete_methods(results / "v3"))
        shown = [m for m in ("bitfit", "full", "lora", "frozen") if m in methods.index and m not in v3_done]
        cells = "；".join(f"`{m}` {methods.acc_mean[m]:.1f}"
                         + ("" if math.isnan(methods.acc_std[m]) else f" ± {methods.acc_std[m]:.1f}")
                         + f"（F1 {methods.f1_mean[m]:.1f}，{int(methods.seeds[m])} 個 seed）" for m in shown)
        used = [r for r in runs if r["method"] in shown and r["part"] != "tta" and r["lr"] == methods.lr[r["method"]]]
        out.append("" if not shown else f"* **方法比較**（協定 2，{P2_RULE_ZH}；離線 MiniLM）：dev accuracy 平均 ± 標準差（跨 seed）{cells}。"
                   f"{'' if n_done == len(planned) else f'研究仍在進行（{n_done} / {len(planned)} 個 run）。'}"
                   f"機器：{_where(used)}。")
    else:
        out.append(f"* **方法比較**（{P2_RULE_ZH}；學習率與 epoch 在 validation 上選，dev 只在選定點報告）："
                   f"已完成 {n_done} / {len(planned)} 個 run，主要方法的表格要等格點與 seed 跑完才會產生。")
    cpu = bench(results, "bench_cpu")
    if cpu:
        m = cpu["shapes"]["minilm"]
        mem = m["memory"][0]
        out.append(f"* **效能**（{machine(cpu['machine'])}，torch {cpu['torch']}，離線 MiniLM，batch {cpu['batch']}）："
                   f"BitFit 一個訓練步的時間是 Full FT 的 {m['step_ms']['bitfit'] / m['step_ms']['full']:.2f} 倍、訓練記憶體是 "
                   f"{mem:.2f} 倍——省下權重梯度與優化器狀態，但前向與輸入梯度照付；推論沒有額外成本"
                   f"（{m['inference']:.2f} 倍），bias pack 是完整 checkpoint 的 "
                   f"{m['pack_share'][0]:.2f} %。")
    tta = csv(results / "v2" / "tta.csv", "target")
    if tta is not None and tta_summary(results / "v3") is None:  # protocol 3's per-seed ratios replace seed 0's
        ratio = lambda t: "BitFit 沒到" if math.isnan(tta.ratio[t]) else f"BitFit / Full FT = {tta.ratio[t]:.2f}"  # noqa: E731
        out.append(f"* **要訓練多久**（協定 2，{P2_RULE_ZH}；只有 seed 0）："
                   f"validation 到多數類加 5 分，{ratio('majority_plus_5')}；到 Full FT 的最好成績，{ratio('full_ft_best')}。")
    out = [line for line in out if line]
    if len(out) > 1 and out[1].startswith("* **方法比較**（"):  # protocol 2's line below still shows some methods
        out[0] += P2_TAIL
    out.append("* 完整的表格與圖、舊研究（v1）的訓練集大小曲線與逐組偏置、效能剖析、講義說法的逐條檢驗："
               "[`results/README.md`](results/README.md)。")
    return "\n".join(out)


def demo_block(results: Path) -> str:
    """README's instructor section: the demo as benchmarks/time_demo.py measured it (results/demo_cpu.json)."""
    import json

    path = results / "demo_cpu.json"
    if not path.exists():
        return "示範的時間由 `python benchmarks/time_demo.py` 量測（從乾淨的副本執行整本 02），寫入 `results/demo_cpu.json`。"
    d = json.loads(path.read_text(encoding="utf-8"))
    above = d["bitfit_dev_accuracy"] - d["dev_majority_accuracy"]
    reading = ("離線 MiniLM 的 pooler 沒訓練過，BitFit 頭幾個 epoch 停在多數類，短短的示範只看得到它剛開始學；"
               if above < 5 else "BitFit 離開了多數類（離線 MiniLM 的 pooler 沒訓練過，頭幾個 epoch 停在那裡）；")
    return (f"量測（`benchmarks/time_demo.py`，{d['date']}，{machine(d['machine'])}，開始前 load average "
            f"{d['loadavg_1min_before']}，commit `{d['commit'][:7]}`）：從乾淨的副本以 `BITFIT_DEMO=1` 執行整本 02 共 "
            f"**{d['wall_seconds']:.0f} 秒**（{d.get('precision', 'float32')}）；BitFit（lr {d['bitfit_lr']}，最多 {d['bitfit_max_epochs']} 個 epoch）留下第 "
            f"{d['bitfit_kept_epoch']:g} 個 epoch，dev accuracy **{d['bitfit_dev_accuracy']:.1f}**、F1 {d['bitfit_dev_f1']:.1f}"
            f"（一個 seed；全部猜 equivalent 是 {d['dev_majority_accuracy']:.1f}，高出 {above:.1f} 分）。{reading}"
            "示範換掉的設定由 02 的設定格印出；各方法在完整設定下的比較在研究的表裡。")


# ----- both pages ------------------------------------------------------------------------------


def render(root: Path) -> dict[str, str]:
    """The new text of README.md and results/README.md, from the current files under ``root``."""
    results = root / "results"
    readme = (root / "README.md").read_text(encoding="utf-8")
    page = (results / "README.md").read_text(encoding="utf-8")
    for name, build in (("study-v3", v3_block), ("study-design", study_design), ("study-progress", study_progress),
                        ("study-results", study_results), ("v1", v1_block), ("perf", perf_block),
                        ("claims", claims_block)):
        page = fill(page, name, build(results))
    readme = fill(fill(readme, "summary", summary_block(results)), "demo", demo_block(results))
    return {"README.md": readme, "results/README.md": page}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether both files are up to date")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests: a copy of the project
    args = parser.parse_args(argv)
    stale = []
    for name, new in render(args.root).items():
        path = args.root / name
        if new != path.read_text(encoding="utf-8"):
            stale.append(name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"out of date with results/: {', '.join(stale)}; run python -m study.pages", file=sys.stderr)
        return 1
    print(("rewritten: " + ", ".join(stale)) if stale and not args.check else "README.md and results/README.md "
          "match results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
