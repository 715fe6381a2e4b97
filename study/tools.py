"""What the study's runners and the benchmarks share: the runner loop, run files, the commit, peak memory.

Both protocols' runners (``study.p2_run``, ``study.run``) run each run in its own child process
(``python -m <runner> --run <spec>``) that writes ``<out>/runs/<name>.json`` whole when it ends, so a
stopped study goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    """The commit of the code that runs (a study runs from a worktree pinned at one); ``-dirty`` if edited."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("-dirty" if dirty else "") if proc.returncode == 0 else "unknown"


def write_run(folder: Path, name: str, result: dict) -> Path:
    """Write ``folder/runs/<name>.json`` whole or not at all (a temporary file, then renamed)."""
    path = Path(folder) / "runs" / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return path


def run_pending(runner: str, folder: Path, pending: Callable[[], list[dict]], alone: Callable[[dict], bool],
                quick: bool, jobs: int, threads: int | None) -> None:
    """Run what ``pending()`` lists, ``jobs`` child processes at a time, asking again until nothing is left.

    Asking again after each batch starts the stages that waited for a grid once it is complete. A run
    for which ``alone(spec)`` holds (one that measures time) waits until no other run is pending, then
    runs by itself with torch's threads.

    Args:
        runner: the module whose ``--run <spec>`` does one run (``"study.run"``).
        folder: the study's output folder (``runs/`` is made in it).
        pending: the specs still to run, in order (each with a unique ``name``).
        alone: whether a spec must run by itself.
        quick, jobs, threads: passed on to each child (``--quick``, ``--jobs``, ``--threads``).
    """
    folder = Path(folder).resolve()
    (folder / "runs").mkdir(parents=True, exist_ok=True)

    def start(spec: dict) -> None:
        n, t = (1, None) if alone(spec) else (jobs, threads)
        print(f"run {spec['name']}", flush=True)
        cmd = [sys.executable, "-m", runner, "--run", json.dumps(spec), "--out", str(folder), "--jobs", str(n)]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(t)} if t else {})}
        subprocess.run(cmd + (["--quick"] if quick else []) + (["--threads", str(t)] if t else []),
                       check=True, env=env, cwd=ROOT)

    while True:
        todo = pending()
        batch = [s for s in todo if not alone(s)] or todo[:1]
        if not batch:
            return
        with ThreadPoolExecutor(max_workers=1 if alone(batch[0]) else jobs) as pool:
            list(pool.map(start, batch))  # list(): re-raises the first failed run


def peak_rss(reset: bool = False) -> int:
    """Peak resident memory of this process in bytes (Linux: VmHWM; elsewhere ru_maxrss).

    ``resource``'s ru_maxrss survives ``exec`` on Linux, so a child process started by
    a big parent would report the parent's peak; VmHWM belongs to this process alone.

    Args:
        reset: on Linux, restart the high-water mark at the current RSS (so a later
            call measures only what happens after this one).
    """
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # Unix only
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
