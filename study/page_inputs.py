"""What the pages (``study.pages``) read from results/: tables, and the figures of ``benchmarks/bench_bitfit.py``.

A benchmark's figures come from the JSON file ``bench_bitfit.py --json`` writes (its raw
measurements; the ratios are computed here). A run saved only as printed text (one without
``--json``, e.g. ``bench_cpu_bert_base.txt``) is read from its text; measuring it again with
``--json`` makes that reader unnecessary. Either way a shape's figures have the same keys:

* ``step_ms``: milliseconds of one training step per method (``full``, ``bitfit``, ...);
* ``step``, ``step_qi``, ``step_no_dropout``: BitFit (or BitFit on query + intermediate) / Full FT;
* ``plain``: plain-PyTorch BitFit / ``apply_bitfit``; ``inference``: BitFit / base model latency;
* ``memory``, ``gpu_peak``: (BitFit / Full FT, BitFit MiB, Full FT MiB), training RSS above the
  loaded model (CPU) or CUDA's peak (GPU); ``memory_no_dropout``: that RSS ratio without dropout;
* ``kept``: (ratio, Full FT's activations, gradients, optimizer state, BitFit's three) in MiB;
* ``pack_share``: (percent, pack bytes, full checkpoint bytes); ``bf16``: the step ratio under autocast;
* ``saves``, ``shared``: the profile's top operators, ``{op: (ms, percent of Full FT's step)}``,
  that BitFit saves and that both pay.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: The label of the v1 study's rule, wherever the pages show its numbers.
V1_RULE = "v1：固定設定，epoch 在 MRPC dev（也就是報告的切分）上以 F1 選"
#: The label of protocol 2's rule, wherever the pages show its numbers.
P2_RULE_ZH = "舊規則：最多 6 個 epoch，seed 0 也在回報裡"
MIB = 2**20


def md(path: Path) -> str | None:
    """A markdown table the study wrote, without its trailing newline; None when it is not there."""
    return path.read_text(encoding="utf-8").rstrip() if path.exists() else None


def csv(path: Path, index: str):
    """A CSV table the study wrote, as a DataFrame indexed by ``index``; None when it is not there."""
    import pandas as pd

    return pd.read_csv(path, index_col=index) if path.exists() else None


def grid_edge(rows) -> str | None:
    """The note for one method's grid rows (columns ``lr`` and ``chosen``) when its chosen rate is the
    grid's largest or smallest (a rate beyond it was never tried); None when it is inside, or not chosen yet."""
    chosen = rows[rows.chosen.astype(bool)]
    if chosen.empty or len(rows) < 2:
        return None
    lr = float(chosen.lr.iloc[0])
    edge = "最大" if lr == rows.lr.max() else "最小" if lr == rows.lr.min() else None
    return f"選定的學習率 {lr:g} 是格點中{edge}的，{'更大' if edge == '最大' else '更小'}的學習率沒有試過" if edge else None


def machine(text: str) -> str:
    """bench_bitfit.py's machine field ('x86_64, 2 cores, cuda: NVIDIA H200') in the page's words."""
    m = re.fullmatch(r"(.*), (\d+) cores, (.*)", text)
    if not m:
        return text
    cpu = f"{m[1]} {m[2]} 核 CPU"
    return cpu + ("，無 GPU" if m[3] == "cpu" else f"＋{m[3].removeprefix('cuda: ')}")


def _profile(prof: dict[str, dict[str, float]], top: int = 6) -> tuple[dict, dict]:
    """The operators BitFit saves and those both pay (as ``bench_bitfit.print_profile`` ranks them)."""
    full, bitfit = prof["full"], prof["bitfit"]
    total = sum(full.values())
    saved = sorted(((full.get(k, 0) - bitfit.get(k, 0), k) for k in full), reverse=True)[:top]
    shared = sorted(((min(full.get(k, 0), bitfit.get(k, 0)), k) for k in full), reverse=True)[:top]
    return ({k: (v, 100 * v / total) for v, k in saved}, {k: (v, 100 * v / total) for v, k in shared})


def _shape_figures(raw: dict) -> dict:
    """One shape's figures from its raw measurements in bench_bitfit.py's JSON."""
    s, d = raw["step_ms"], raw["step_ms_no_dropout"]
    out = {"step_ms": s, "step": s["bitfit"] / s["full"], "step_qi": s["bitfit_qi"] / s["full"],
           "plain": s["plain"] / s["bitfit"], "step_no_dropout": d["bitfit"] / d["full"],
           "inference": raw["inference_ms"]["bitfit"] / raw["inference_ms"]["base"],
           "pack_share": (100 * raw["pack"]["pack_bytes"] / raw["pack"]["full_bytes"], raw["pack"]["pack_bytes"],
                          raw["pack"]["full_bytes"])}
    out["saves"], out["shared"] = _profile(raw["profile_ms"])
    if "cpu_rss" in raw:
        rss, nodrop = raw["cpu_rss"], raw["cpu_rss_no_dropout"]
        above = {k: (v["peak"] - v["loaded"]) / MIB for k, v in rss.items()}
        out["memory"] = (above["bitfit"] / above["full"], above["bitfit"], above["full"])
        kept = {k: [rss[k][part] / MIB for part in ("activations", "gradients", "optimizer")] for k in ("full", "bitfit")}
        out["kept"] = (sum(kept["bitfit"]) / sum(kept["full"]), *kept["full"], *kept["bitfit"])
        above = {k: v["peak"] - v["loaded"] for k, v in nodrop.items()}
        out["memory_no_dropout"] = above["bitfit"] / above["full"]
    if "gpu_peak" in raw:
        g, b = raw["gpu_peak"], raw["step_ms_bf16"]
        out["gpu_peak"] = (g["bitfit"] / g["full"], g["bitfit"] / MIB, g["full"] / MIB)
        out["bf16"] = b["bitfit"] / b["full"]
    return out


#: The printed label of each figure (bench_bitfit.py's text output), for runs saved as text only.
_TEXT_LABELS = {
    "ratio BitFit / full FT": "step", "ratio BitFit(q+i) / full FT": "step_qi",
    "ratio plain-PyTorch BitFit / ours": "plain", "without dropout, BitFit / full": "step_no_dropout",
    "training memory above loaded model, BitFit / full FT": "memory", "memory a step keeps, BitFit / full FT": "kept",
    "without dropout, memory above loaded model": "memory_no_dropout", "inference BitFit / base": "inference",
    "pack / full checkpoint bytes": "pack_share", "bf16 autocast: BitFit / full FT": "bf16",
    "peak memory BitFit / full FT": "gpu_peak",
}
_SIZE = {"memory": 3, "kept": 7, "pack_share": 3, "gpu_peak": 3}


def _floats(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*", text)]


def _from_text(path: Path) -> dict:
    """The figures of a run saved only as bench_bitfit.py's printed output."""
    out: dict = {"shapes": {}}
    shape: dict = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if m := re.match(r"# BitFit benchmark on (.*) \(torch (.*)\), batch (\d+), length (\d+)", line):
            out.update(machine=m[1], torch=m[2], batch=int(m[3]), seq_len=int(m[4]))
        elif line.startswith("## one Trainer epoch"):
            shape = {}
        elif line.startswith("seconds:"):
            out["epoch_s"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", line.split(":", 1)[1])}
        elif line.startswith("## "):
            shape = out["shapes"][line[3:]] = {}
        elif line.startswith("step time (ms):"):
            shape["step_ms"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", line.split(":", 1)[1])}
        elif line.startswith(("BitFit saves", "both pay")):
            shape["saves" if line.startswith("BitFit") else "shared"] = {
                op: (float(ms), float(pct)) for op, ms, pct in
                re.findall(r"([\w:#.]+) (\d+) \((\d+) %\)", line.split(":", 1)[1])}
        elif (m := re.match(r"(.*?\S)\s*:\s(.*)", line)) and (key := _TEXT_LABELS.get(" ".join(m[1].split()))):
            values = _floats(m[2])
            shape[key] = tuple(values[:_SIZE[key]]) if key in _SIZE else values[0]
    return out


def bench(results: Path, stem: str) -> dict | None:
    """The figures of one bench_bitfit.py run: ``<stem>.json`` where it exists, else ``<stem>.txt``; None if neither.

    Returns:
        ``machine``, ``torch``, ``batch``, ``seq_len``, ``shapes`` (shape -> its figures, see the
        module's docstring) and, where measured, ``epoch_s`` (seconds of one Trainer epoch per recipe).
    """
    path = results / f"{stem}.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {**data, "shapes": {k: _shape_figures(v) for k, v in data["shapes"].items()}}
    path = results / f"{stem}.txt"
    return _from_text(path) if path.exists() else None
