"""Time the instructor demo: 02-Train.ipynb with BITFIT_DEMO=1, from a clean copy of the committed tree.

The committed files (``git archive HEAD``) are unpacked into a temporary folder, so nothing of this
working tree (packs, runs, edits) takes part, and 02 is executed there top to bottom in a new kernel, as
an instructor would run it. What is recorded: the wall time from kernel start to the last cell, each
section's share, and what 02 printed about BitFit (the kept epoch's dev accuracy and F1), plus the
machine and its load average before the run (the demo must be measured on an otherwise idle machine).

    BITFIT_DATA_DIR=../shared/data/mrpc python benchmarks/time_demo.py   # writes results/demo_cpu.json

README.md's instructor section and results/README.md read that file (python -m study.pages).
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BITFIT_LINE = re.compile(r"BitFit, lr (?P<lr>\S+), at most (?P<epochs>\d+) epochs: (?:trained [\d.]+, )?kept epoch (?P<kept>[\d.]+) .*?"
                         r"Dev at that epoch: accuracy (?P<acc>[\d.]+), F1 (?P<f1>[\d.]+)\. (?P<train_s>\d+) s")
MAJORITY_LINE = re.compile(r"always 'equivalent' on dev: accuracy (?P<acc>[\d.]+)")
PRECISION_LINE = re.compile(r"DEMO precision: (?P<precision>bf16 autocast|float32)")


def cell_text(cell: dict) -> str:
    """Everything a code cell printed (stdout streams and text/plain results)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            value = out["data"]["text/plain"]
            parts.append("".join(value) if isinstance(value, list) else value)
    return "".join(parts)


def read_demo(nb: dict) -> dict:
    """From an executed 02: BitFit's printed result and seconds per section (from nbclient's cell timings)."""
    from datetime import datetime

    found, majority, precision, sections, section = None, None, None, {}, "top"
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith("## "):
            section = source.splitlines()[0][3:].split("：")[0].strip()
        if cell["cell_type"] != "code":
            continue
        found = found or BITFIT_LINE.search(cell_text(cell))
        majority = majority or MAJORITY_LINE.search(cell_text(cell))
        precision = precision or PRECISION_LINE.search(cell_text(cell))
        timing = cell.get("metadata", {}).get("execution", {})
        if "shell.execute_reply" in timing and "iopub.execute_input" in timing:
            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            sections[section] = sections.get(section, 0.0) + (end - start).total_seconds()
    if found is None:
        raise ValueError("02 printed no BitFit result line: did section 3 run?")
    return {"bitfit_lr": found["lr"], "bitfit_max_epochs": int(found["epochs"]), "bitfit_kept_epoch": float(found["kept"]),
            "bitfit_dev_accuracy": float(found["acc"]), "bitfit_dev_f1": float(found["f1"]),
            "bitfit_seconds_printed": int(found["train_s"]),
            "precision": precision["precision"] if precision else "float32",
            "dev_majority_accuracy": float(majority["acc"]) if majority else None, "seconds_per_section": {k: round(v, 1) for k, v in sections.items()}}


def clean_copy(target: Path) -> str:
    """Unpack the committed tree (HEAD) into ``target``; returns the commit."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return commit


def main() -> int:
    import nbformat
    from nbclient import NotebookClient

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        commit = clean_copy(Path(tmp))
        nb = nbformat.read(Path(tmp) / "02-Train.ipynb", as_version=4)
        os.environ["BITFIT_DEMO"] = "1"
        os.environ.pop("BITFIT_QUICK", None)
        client = NotebookClient(nb, timeout=-1, kernel_name="python3", resources={"metadata": {"path": tmp}})
        start = time.perf_counter()
        client.execute()
        wall = time.perf_counter() - start
    result = {"what": "02-Train.ipynb with BITFIT_DEMO=1, executed top to bottom in a new kernel from a clean copy",
              "commit": commit, "wall_seconds": round(wall, 1), **read_demo(nb),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_cuda() or 'cpu'}", "cpu_model": _cpu_model(),
              "model": os.environ.get("BITFIT_MODEL") or "the demo's default (offline MiniLM on a CPU)",
              "loadavg_1min_before": round(load, 2), "date": time.strftime("%Y-%m-%d")}
    out = ROOT / "results" / "demo_cpu.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


def _cuda() -> str | None:
    import torch

    return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
