"""Write the generated parts of README.md and results/README.md from the files in results/.

Every table, plot reference and number inside a generated block is read or computed from results/
(the study's run files and tables, the benchmark outputs); nothing in them is typed by hand. A block
sits between two marker comments, so the hand-written prose around it survives a rewrite::

    <!-- generated:NAME (python -m study.pages) -->
    ...
    <!-- /generated:NAME -->

Blocks of results/README.md: ``study-design`` (the rule's grids and seeds, from the registry, lab.registry.METHODS),
``study-progress`` (runs done of the plan), ``study-results`` (grid, methods, ablations, time-to-accuracy
and the plot, where written), ``v1`` (the old study's curve and groups, labelled with their rule),
``perf`` (benchmarks/bench_bitfit.py's outputs) and ``claims`` (the handout's claims, checked).
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

ROOT = Path(__file__).resolve().parents[1]

# The v1 seed-0 run files predate the device and version fields: this is where they ran.
V1_CPU_MACHINE = "一台 2 核 x86-64 CPU（無 GPU、torch 2.13.0 CPU 版、transformers 5.24.0）"
V1_RULE = "v1：固定設定，epoch 在 MRPC dev（也就是報告的切分）上以 F1 選"
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


# ----- reading results/ ---------------------------------------------------------------


def md(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").rstrip() if path.exists() else None


def csv(path: Path, index: str):
    import pandas as pd

    return pd.read_csv(path, index_col=index) if path.exists() else None


def machine(text: str) -> str:
    """bench_bitfit.py's machine line ('x86_64, 2 cores, cuda: NVIDIA H200') in the page's words."""
    m = re.fullmatch(r"(.*), (\d+) cores, (.*)", text)
    if not m:
        return text
    cpu = f"{m[1]} {m[2]} 核 CPU"
    return cpu + ("，無 GPU" if m[3] == "cpu" else f"＋{m[3].removeprefix('cuda: ')}")


def _floats(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*", text)]


def bench(path: Path) -> dict | None:
    """What benchmarks/bench_bitfit.py printed into ``path``: the machine, and per shape its figures."""
    if not path.exists():
        return None
    out: dict = {"shapes": {}}
    shape: dict = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if m := re.match(r"# BitFit benchmark on (.*) \(torch (.*)\), batch (\d+), length (\d+)", line):
            out.update(machine=m[1], torch=m[2], batch=int(m[3]), length=int(m[4]))
        elif line.startswith("## one Trainer epoch"):
            shape = out["epoch"] = {}
        elif line.startswith("## "):
            shape = out["shapes"][line[3:]] = {}
        elif line.startswith(("step time (ms):", "seconds:")):
            shape["ms" if line.startswith("step") else "s"] = {
                k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", line.split(":", 1)[1])}
        elif line.startswith(("BitFit saves", "both pay")):
            key = "saves" if line.startswith("BitFit") else "shared"
            shape[key] = {op: (float(ms), float(pct)) for op, ms, pct in
                          re.findall(r"([\w:#.]+) (\d+) \((\d+) %\)", line.split(":", 1)[1])}
        elif not line.startswith(("profile", "/", "Writing")) and (
                m := re.match(r"(.*?\S)\s+:\s(.*)", line) or re.match(r"(.*?):\s(.*)", line)):
            shape[" ".join(m[1].split())] = _floats(m[2])  # "label : 0.681 (1924.7 / 2825.0 ms)"
    return out


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
    runs = p2.read_runs(results)
    planned = p2.plan(runs)
    done = {r["name"] for r in runs}
    labels = {"grid": "格點", "seeds": "補 seed", "ablation": "消融", "tta": "time-to-accuracy"}
    per_part = "、".join(f"{label} {sum(s['name'] in done for s in planned if s['part'] == part)}/"
                        f"{sum(s['part'] == part for s in planned)}" for part, label in labels.items())
    n_done = sum(s["name"] in done for s in planned)
    head = ("**全部 run 已完成**" if n_done == len(planned) else f"**已完成 {n_done} / {len(planned)} 個 run**")
    text = f"{head}（{per_part}；依 `results/runs/` 裡的 run 檔計算）。"
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
    grid, methods = csv(results / "grid.csv", "method"), csv(results / "methods.csv", "method")
    if grid is None:
        return None
    lines = []
    for method, rows in grid.groupby(level=0):
        chosen = rows[rows.chosen.astype(bool)]
        if chosen.empty:
            continue
        lr = float(chosen.lr.iloc[0])
        edge = "最大" if lr == rows.lr.max() else "最小" if lr == rows.lr.min() else None
        notes = [f"選定的學習率 {lr:g} 是格點中{edge}的，{'更大' if edge == '最大' else '更小'}的學習率沒有試過"] if edge else []
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
    out = ["#### 格點：每個學習率在 validation 上的分數", "",
           "選擇只看這張表：每個 run 在 validation MCC 最好的 epoch（`kept_epoch`）的 validation 分數；"
           "`chosen` 標出每個方法選定的學習率（格點跑完才會選）。", "",
           md(results / "grid.md") or NOT_YET, ""]
    caveats = grid_caveats(results)
    out += [caveats, ""] if caveats else []
    out += ["#### 主要方法：選定設定下的 dev 分數", "",
           "dev accuracy／F1（%）在選定的學習率、每個 seed 自己在 validation 上選定的 epoch（`kept_epochs` 依 seed 列出）；"
           "平均 ± 標準差跨 seed，`acc_per_seed` 列出每個 seed。", "",
           md(results / "methods.md") or NOT_YET]
    if (results / "methods.png").exists():
        out += ["", "![各方法的 dev accuracy 與 F1：每個 seed 一點、橫線為平均、紅線為全部猜 equivalent](methods.png)"]
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


# ----- results/README.md: performance ----------------------------------------------------


def _r(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def pack_switch_line(results: Path) -> str:
    """Pack switching as measured by ``bench_bitfit.py --pack-only`` (the loader re-hashes the base every time)."""
    import json

    path = results / "bench_pack_switch.json"
    if not path.exists():
        return "（切換 pack 的時間：執行 `python benchmarks/bench_bitfit.py --pack-only` 產生 `results/bench_pack_switch.*`。）"
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {"minilm": "MiniLM", "bert-base": "BERT-base 形狀"}
    parts = [f"{names.get(k, k)} 每次 {v['pack']['switch_ms']:.0f} ms（其中雜湊 {v['pack']['frozen_bytes'] / 1e6:.0f} MB "
             f"凍結權重 {v['pack']['hash_ms']:.0f} ms）" for k, v in data["shapes"].items()]
    return ("**在已載入的模型上切換 bias pack**：" + "、".join(parts) + f"（{machine(data['machine'])}，torch {data['torch']}；"
            f"量測開始時 load average {data['load_average_1min']:.1f}，有其他工作共用 CPU 時每個時間都偏長；"
            "`python benchmarks/bench_bitfit.py --pack-only`，原始輸出在 `results/bench_pack_switch.txt`）。"
            "每次載入都重新計算凍結權重的 SHA-256（不快取），所以基底無論怎麼被改過（`.data`、`load_state_dict`、`copy_`）"
            "都會被拒絕；代價是切換時間隨模型大小成長，幾乎全花在雜湊上。")


def perf_block(results: Path) -> str:
    cpu, bert, gpu = (bench(results / f) for f in ("bench_cpu.txt", "bench_cpu_bert_base.txt", "bench_gpu_h200.txt"))
    if cpu is None:
        return "（`results/bench_cpu.txt` 不在：執行 `python benchmarks/bench_bitfit.py --epoch` 產生。）"
    shapes = {"minilm": cpu["shapes"]["minilm"], **({"bert-base": bert["shapes"]["bert-base"]} if bert else {})}
    names = {"minilm": "離線 MiniLM（真實權重）", "bert-base": "BERT-base 形狀（隨機權重）"}

    def step(s):
        return f"{s['ratio BitFit / full FT'][0]:.3f}（{s['ms']['bitfit']:,.0f} / {s['ms']['full']:,.0f} ms）"

    def above(s):
        ratio, b, f = s["training memory above loaded model, BitFit / full FT"][:3]
        return f"{ratio:.3f}（{b:,.0f} / {f:,.0f} MiB）"

    def pack(s):
        pct, b, f = s["pack / full checkpoint bytes"]
        return f"{pct:.3f} %（{b:,.0f} / {f:,.0f} B）"

    rows = [
        ("訓練一步（forward＋backward＋AdamW）BitFit / Full FT", step),
        ("同上，模型不用 dropout", lambda s: _r(s["without dropout, BitFit / full"][0])),
        ("只訓練 query＋intermediate 偏置 / Full FT", lambda s: _r(s["ratio BitFit(q+i) / full FT"][0])),
        ("「純 PyTorch 依名稱選偏置」/ 本專案 `apply_bitfit`", lambda s: _r(s["ratio plain-PyTorch BitFit / ours"][0])),
        ("訓練記憶體（高於載入後的 RSS）BitFit / Full FT", above),
        ("同上，依張量計算（保存的激活值＋梯度＋優化器狀態）", lambda s: _r(s["memory a step keeps, BitFit / full FT"][0])),
        ("同上（RSS），模型不用 dropout", lambda s: _r(s["without dropout, memory above loaded model"][0])),
        ("推論延遲 BitFit / 原模型", lambda s: _r(s["inference BitFit / base"][0])),
        ("pack / 完整 checkpoint", pack),
    ]
    table = ["| 項目（比值 = BitFit / 對照） | " + " | ".join(names[k] for k in shapes) + " |",
             "|---|" + "---|" * len(shapes)]
    table += [f"| {label} | " + " | ".join(f(s) for s in shapes.values()) + " |" for label, f in rows]
    epoch = cpu.get("epoch", {}).get("s")
    if epoch:
        table.insert(6, f"| 一個真實 Trainer epoch（02 的設定，整個 MRPC 訓練集）BitFit / Full FT | "
                        f"{epoch['bitfit'] / epoch['full_ft']:.3f}（{epoch['bitfit']:.1f} / {epoch['full_ft']:.1f} s） |"
                     + " — |" * (len(shapes) - 1))
        table.insert(7, f"| 同上，本專案 BitFit / 原始 BitFit 配方（全部補到 128、batch 8、不分組） | "
                        f"{epoch['bitfit'] / epoch['bitfit_original_recipe']:.3f}（{epoch['bitfit']:.1f} / "
                        f"{epoch['bitfit_original_recipe']:.1f} s） |" + " — |" * (len(shapes) - 1))
    files = "`results/bench_cpu.txt`（＋`bench_cpu.json`）" + ("、`results/bench_cpu_bert_base.txt`" if bert else "")
    out = [f"量測環境：{machine(cpu['machine'])}（torch {cpu['torch']}），fp32、batch {cpu['batch']}、長度 {cpu['length']}。"
           f"指令：`python benchmarks/bench_bitfit.py --shapes minilm --epoch` 與 `--shapes bert-base`；原始輸出在 {files}。"
           "各方法在同一次執行中交錯量測；記憶體是每個方法各開一個新行程量測。每個數字都只量了一次：只差在小數第二位時請當成雜訊。",
           "", *table, "", pack_switch_line(results), ""]

    m = shapes["minilm"]
    saves, shared = m["saves"], m["shared"]
    ratios = [s["ratio BitFit / full FT"][0] for s in shapes.values()]
    ratios += [s["without dropout, BitFit / full"][0] for s in shapes.values()]
    bert_mm = f"；BERT-base 佔 {bert['shapes']['bert-base']['saves']['aten::mm'][1]:.0f} %" if bert else ""
    kept = m["memory a step keeps, BitFit / full FT"]  # ratio, full act, grad, opt, bitfit act, grad, opt
    nodrop = {k: s["without dropout, memory above loaded model"][0] for k, s in shapes.items()}
    out += [
        f"**時間去了哪裡**（`bench_bitfit.py` 內建的 profile，MiniLM，每步平均）：BitFit 省下的幾乎全是 `aten::mm`"
        f"——反向傳播中計算權重梯度 $\\partial L/\\partial W$ 的矩陣乘法（全參數微調每步 {saves['aten::mm'][0]:.0f} ms，"
        f"佔 {saves['aten::mm'][1]:.0f} %{bert_mm}）。兩者都要付的是：前向的 `addmm`（{shared['aten::addmm'][1]:.0f} %）、"
        f"反向中**輸入梯度**的 `mm`（{shared['aten::mm'][1]:.0f} %），以及 dropout 產生遮罩的 `bernoulli_`"
        f"（{shared['aten::bernoulli_'][1]:.0f} %）。所以在 CPU 上，BitFit 一步最多只能省掉「權重梯度」那一份矩陣乘法；"
        f"再加上 dropout、softmax、GELU、LayerNorm 等兩者共同的成本，上表的步驟比值落在 "
        f"{min(ratios):.2f}–{max(ratios):.2f}。我們檢查過可能由本專案程式造成的浪費，都沒有："
        f"優化器只拿到 `requires_grad` 的參數（BitFit 的 AdamW 狀態 {kept[6]:.1f} MiB）；凍結的權重沒有 `.grad`"
        f"（梯度 {kept[5]:.1f} MiB）；只用來算權重梯度的線性層輸入沒有被保存（BitFit 保存的激活值少了 "
        f"{kept[1] - kept[4]:.0f} MiB，正是這些張量）；純 PyTorch 依名稱選偏置的寫法也一樣快"
        f"（比值 {m['ratio plain-PyTorch BitFit / ours'][0]:.3f}）。",
        "",
        f"**記憶體去了哪裡**（MiniLM）：全參數微調多出的是權重梯度（{kept[2]:.1f} MiB）、AdamW 的兩份狀態"
        f"（{kept[3]:.0f} MiB）與線性層輸入（{kept[1] - kept[4]:.0f} MiB）；BitFit 三者都省了。但 batch {cpu['batch']} × "
        f"{cpu['length']} 時，兩者共同需要的激活值更大：注意力機率與其 dropout 遮罩（每層 3 個 batch × 頭數 × "
        f"{cpu['length']} × {cpu['length']} 的 float 張量：機率、遮罩、遮罩後的機率）、GELU 的輸入、LayerNorm 的輸入，"
        f"合計 {kept[4]:.0f} MiB。注意力有 dropout 時，PyTorch 在 CPU 上的 `scaled_dot_product_attention` 只能走"
        "「數學」版本、保存整個機率矩陣；沒有 dropout 時改走融合 kernel（只保存 Q、K、V、輸出與每列的 logsumexp），"
        "記憶體比值降到 " + "、".join(f"{v:.3f}（{names[k].split('（')[0]}）" for k, v in nodrop.items()) + "。"
        "換句話說：**模型越大、batch 與序列越短，BitFit 省下的記憶體比例越高**；激活值佔主導時，省下的比例有限。",
    ]
    if gpu:
        g = gpu["shapes"]
        gshapes = [k for k in ("minilm", "bert-base") if k in g]
        grows = [
            ("訓練一步 BitFit / Full FT（fp32）", lambda s: f"{s['ratio BitFit / full FT'][0]:.3f}"
                                                          f"（{s['ms']['bitfit']:.1f} / {s['ms']['full']:.1f} ms）"),
            ("同上，bf16 autocast", lambda s: _r(s["bf16 autocast: BitFit / full FT"][0])),
            ("CUDA 記憶體峰值（`max_memory_allocated`）BitFit / Full FT",
             lambda s: "{:.3f}（{:,.0f} / {:,.0f} MiB）".format(*s["peak memory BitFit / full FT"][:3])),
            ("推論延遲 BitFit / 原模型", lambda s: _r(s["inference BitFit / base"][0])),
        ]
        gratios = [g[k]["ratio BitFit / full FT"][0] for k in gshapes]
        gratios += [g[k]["bf16 autocast: BitFit / full FT"][0] for k in gshapes]
        out += ["", f"**GPU 上**（{machine(gpu['machine'])}，torch {gpu['torch']}，fp32；同一個腳本 "
                "`python benchmarks/bench_bitfit.py --shapes minilm bert-base`，只跑了一次；原始輸出在 "
                "`results/bench_gpu_h200.txt`＋`.json`）：", "",
                "| 項目（比值 = BitFit / 對照） | " + " | ".join(names[k].split("（")[0] for k in gshapes) + " |",
                "|---|" + "---|" * len(gshapes),
                *(f"| {label} | " + " | ".join(f(g[k]) for k in gshapes) + " |" for label, f in grows), "",
                f"GPU 上的步驟比值落在 {min(gratios):.2f}–{max(gratios):.2f}：BitFit 省下的仍只有權重梯度的矩陣乘法與優化器更新，"
                "前向與輸入梯度照付。MiniLM 一步只要十幾毫秒，這麼小的工作量在 GPU 上多半受固定開銷（kernel 啟動等）限制，"
                "所以比值更接近 1（推測，沒有另外量）。"]
    return "\n".join(out)


# ----- results/README.md: the handout's claims ----------------------------------------------


def bias_share(config) -> float:
    """Percent of a BERT classifier's parameters that are encoder biases (head excluded)."""
    import torch
    from transformers import BertForSequenceClassification

    import bitfit_utils as bu

    with torch.device("meta"):
        report = bu.apply_bitfit(BertForSequenceClassification(config))
    return 100 * (report.trainable - 2 * config.hidden_size - 2) / report.total


def _ablation(results: Path):
    """(table, label): protocol 2's methods + ablations when both hold BitFit and the ablation rows, else v1's."""
    import pandas as pd

    new = [t for t in (csv(results / "methods.csv", "method"), csv(results / "ablations.csv", "method")) if t is not None]
    if new:
        table = pd.concat(new)
        if {"bitfit", "lora", "adaptive_init", "handout_bitfitlora", "bitfit_lora"} <= set(table.index):
            return table, "協定 2，選定設定下每個方法 " + "／".join(map(str, sorted(set(table.seeds)))) + " 個 seed 的 dev 平均"
    old = csv(results / "v1" / "methods.csv", "method")
    if old is None:
        return None, ""
    return old, f"{V1_RULE}；{int(old.seeds.min())} 個 seed 的 dev 平均"


def claims_block(results: Path) -> str:
    from transformers import BertConfig

    out = []
    cpu = bench(results / "bench_cpu.txt")
    if cpu:
        m, epoch = cpu["shapes"]["minilm"], cpu.get("epoch", {}).get("s", {})
        ratio, b, f = m["training memory above loaded model, BitFit / full FT"][:3]
        text = ("* **沒有來源的表格**（GLUE 平均 82.3、8 分鐘 vs 45 分鐘、3.2 GB vs 8.5 GB）：本專案不引用，"
                f"改以自己量到的比值對照（離線 MiniLM，{machine(cpu['machine'])}，`results/bench_cpu.txt`）：")
        if epoch:
            text += (f"一個 Trainer epoch 的時間 BitFit / Full FT = {epoch['bitfit'] / epoch['full_ft']:.2f}"
                     f"（講義 8/45 = {8 / 45:.2f}）；")
        text += f"訓練記憶體 BitFit / Full FT = {ratio:.2f}（講義 3.2/8.5 = {3.2 / 8.5:.2f}）。"
        tta = csv(results / "tta.csv", "target")
        if tta is not None and not math.isnan(tta.ratio.get("full_ft_best", math.nan)):
            text += (f"整段訓練要到 Full FT 在 validation 上的最好成績，BitFit / Full FT 的時間 = "
                     f"{tta.ratio['full_ft_best']:.2f}（協定 2 的 time-to-accuracy）。")
        out.append(text + "原因見上方「效能」。我們只跑 MRPC，沒有 GLUE 平均可比。")
    share = {"base": bias_share(BertConfig(num_labels=2)),
             "large": bias_share(BertConfig(num_labels=2, hidden_size=1024, num_hidden_layers=24,
                                            num_attention_heads=16, intermediate_size=4096))}
    out.append(f"* **「0.08 % 的參數」**：以形狀計算，BERT-base 的偏置佔 {share['base']:.3f} %，BERT-large 佔 "
               f"{share['large']:.3f} %：0.08 % 是 BERT-large 的數字。")
    table, label = _ablation(results)
    if table is not None:
        def d(method: str, col: str) -> float:
            return table.loc["bitfit", col] - table.loc[method, col]

        out.append("* **「自適應偏置初始化」**把預訓練好的偏置整個換成 N(0, 0.01) 雜訊（與原值幾乎無關，02 印出相關係數）；"
                   f"之後再做 BitFit，dev F1 比直接 BitFit 低 {d('adaptive_init', 'f1_mean'):.1f} 分、accuracy 低 "
                   f"{d('adaptive_init', 'acc_mean'):.1f} 分（{label}）。")
        out.append("* **`BitFitLoRA` 類別**：`get_peft_model` 把偏置再次凍結（PEFT 只有 `LoraConfig(bias=\"all\")` 才保留偏置），"
                   "又因為沒有 `task_type`，分類頭也被凍結、adapter 檔裡也沒有它（訓練好的模型無法還原）。可訓練的只有 LoRA 矩陣"
                   f"（{int(table.loc['handout_bitfitlora', 'trainable']):,} 個，02 逐組列出）；dev F1 比 BitFit 低 "
                   f"{d('handout_bitfitlora', 'f1_mean'):.1f} 分，比正確的 BitFit + LoRA（`bias=\"all\"`）低 "
                   f"{table.loc['bitfit_lora', 'f1_mean'] - table.loc['handout_bitfitlora', 'f1_mean']:.1f} 分（{label}）。")
    groups, old = csv(results / "v1" / "groups.csv", "group"), csv(results / "v1" / "methods.csv", "method")
    if groups is not None and old is not None:
        g = groups.f1_mean
        out.append(f"* **「`query` 與 `intermediate` 的偏置最重要、`key` 最不重要」**：一次只訓練一組偏置（上方的 v1 表；"
                   f"{V1_RULE}；{int(groups.seeds.min())} 個 seed）：`{g.idxmax()}` 排第一（F1 {g.max():.1f}，"
                   f"同一規則下只訓練分類頭是 {old.f1_mean['frozen']:.1f}）、`key` 是 {g['key']:.1f}，`query` 單獨訓練也只有 "
                   f"{g['query']:.1f}：講義的前半句在這裡不成立。任何一組單獨都遠不及全部偏置（{old.f1_mean['bitfit']:.1f}）。")
    return "\n".join(out)


# ----- README.md: the summary ----------------------------------------------------------------


def summary_block(results: Path) -> str:
    runs = p2.read_runs(results)
    planned = p2.plan(runs)
    done = {r["name"] for r in runs}
    n_done = sum(s["name"] in done for s in planned)
    out = []
    methods = csv(results / "methods.csv", "method")
    if methods is not None:
        shown = [m for m in ("bitfit", "full", "lora", "frozen") if m in methods.index]
        cells = "；".join(f"`{m}` {methods.acc_mean[m]:.1f}"
                         + ("" if math.isnan(methods.acc_std[m]) else f" ± {methods.acc_std[m]:.1f}")
                         + f"（F1 {methods.f1_mean[m]:.1f}，{int(methods.seeds[m])} 個 seed）" for m in shown)
        used = [r for r in runs if r["method"] in shown and r["part"] != "tta" and r["lr"] == methods.lr[r["method"]]]
        out.append(f"* **方法比較**（協定 2：學習率與 epoch 在 MRPC 訓練集切出的 validation 上選，dev 只在選定點報告；"
                   f"離線 MiniLM）：dev accuracy 平均 ± 標準差（跨 seed）{cells}。"
                   f"{'' if n_done == len(planned) else f'研究仍在進行（{n_done} / {len(planned)} 個 run）。'}"
                   f"機器：{_where(used)}。")
    else:
        out.append(f"* **方法比較**（協定 2：學習率與 epoch 在 MRPC 訓練集切出的 validation 上選，dev 只在選定點報告）："
                   f"已完成 {n_done} / {len(planned)} 個 run，主要方法的表格要等格點與 seed 跑完才會產生。")
    cpu = bench(results / "bench_cpu.txt")
    if cpu:
        m = cpu["shapes"]["minilm"]
        mem = m["training memory above loaded model, BitFit / full FT"][0]
        out.append(f"* **效能**（{machine(cpu['machine'])}，torch {cpu['torch']}，離線 MiniLM，batch {cpu['batch']}）："
                   f"BitFit 一個訓練步的時間是 Full FT 的 {m['ms']['bitfit'] / m['ms']['full']:.2f} 倍、訓練記憶體是 "
                   f"{mem:.2f} 倍——省下權重梯度與優化器狀態，但前向與輸入梯度照付；推論沒有額外成本"
                   f"（{m['inference BitFit / base'][0]:.2f} 倍），bias pack 是完整 checkpoint 的 "
                   f"{m['pack / full checkpoint bytes'][0]:.2f} %。")
    tta = csv(results / "tta.csv", "target")
    if tta is not None:
        ratio = lambda t: "BitFit 沒到" if math.isnan(tta.ratio[t]) else f"BitFit / Full FT = {tta.ratio[t]:.2f}"  # noqa: E731
        out.append(f"* **要訓練多久**（time-to-accuracy，兩者在 CPU 上各單獨跑一次）：validation 到多數類加 5 分，"
                   f"{ratio('majority_plus_5')}；到 Full FT 的最好成績，{ratio('full_ft_best')}。原因在 02 第 7 節。")
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
    for name, build in (("study-design", study_design), ("study-progress", study_progress),
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
