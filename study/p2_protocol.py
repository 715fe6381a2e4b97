"""Protocol 2's rule and plan, shared by its runner (``study.p2_run``), its report (``study.p2_report``)
and the pages (``study.pages``): what a method is tuned with, which epoch and rate the rule keeps,
every run of the protocol, and what the finished run files say. Nothing here trains.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab.registry import HEADLINE, METHODS
from lab.selection import best_entry
from lab.tasks import DEFAULT_BATCH_SIZE


PROTOCOL = 2
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "v2"
BATCH_SIZE = DEFAULT_BATCH_SIZE
TTA_METHODS = ("bitfit", "full")
#: Seconds per epoch (training and both evaluations, 2 threads) until runs of a method have measured it.
EPOCH_S_GUESS = {"frozen": 40.0, "full": 120.0}
EPOCH_S_DEFAULT = 90.0


def kept(run: dict) -> dict:
    """The epoch the rule keeps (``lab.selection``): best validation MCC, then validation accuracy, then the earliest."""
    return best_entry(run["log"])


def choose(runs: list[dict]) -> dict[str, float]:
    """The chosen learning rate of every headline method whose grid is complete (on validation only)."""
    chosen = {}
    for method in HEADLINE:
        grid = {r["lr"]: r for r in runs if r["part"] == "grid" and r["method"] == method}
        if grid and set(grid) >= set(_grid_lrs(method, quick=runs[0].get("quick", False))):
            best = max(grid.values(), key=lambda r: (kept(r)["validation_mcc"], kept(r)["validation_accuracy"],
                                                     -r["lr"]))
            chosen[method] = best["lr"]
    return chosen


def _grid_lrs(method: str, quick: bool) -> tuple[float, ...]:
    lrs = METHODS[method].lrs
    return lrs[:2] if quick and method == "bitfit" else lrs[:1] if quick else lrs


def _name(part: str, method: str, lr: float | None, seed: int) -> str:
    return f"{part}-{method}-lr{lr:g}-s{seed}" if lr is not None else f"{part}-{method}-lr?-s{seed}"


def plan(runs: list[dict], quick: bool = False) -> list[dict]:
    """Every run of the protocol; ``lr`` is None where it waits for a grid to be complete."""
    chosen = choose(runs) if runs else {}
    specs = [{"part": "grid", "method": m, "lr": lr, "seed": 0} for m in HEADLINE for lr in _grid_lrs(m, quick)]
    for method in HEADLINE:
        seeds = (2 if method == "bitfit" else 1) if quick else METHODS[method].seeds
        specs += [{"part": "seeds", "method": method, "lr": chosen.get(method), "seed": s} for s in range(1, seeds)]
    for method, spec in METHODS.items():
        if spec.parent:
            specs += [{"part": "ablation", "method": method, "lr": chosen.get(spec.parent), "seed": s}
                      for s in range(1 if quick else 3)]
    specs += [{"part": "tta", "method": m, "lr": chosen.get(m), "seed": 0} for m in TTA_METHODS]
    for s in specs:
        s["name"] = _name(s["part"], s["method"], s["lr"], s["seed"])
        s["quick"] = quick
    return specs


def read_runs(folder: Path) -> list[dict]:
    """Every finished run of the study in ``folder`` (its ``runs/*.json`` files), by name."""
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]


def epoch_seconds(runs: list[dict]) -> dict[str, float]:
    """Machine seconds per epoch (training and evaluations) per method, measured on this CPU."""
    seconds: dict[str, list[float]] = {}
    for r in runs:  # k runs side by side each took k times their share of the machine
        if r["device"] == "cpu" and not r.get("quick"):
            seconds.setdefault(r["method"], []).append(r["wall_seconds"] / r["epochs"] / r["concurrent_runs"])
    return {m: sum(v) / len(v) for m, v in seconds.items()}


def machine_seconds(run: dict) -> float:
    """The machine a run took: its wall time divided by the runs it shared the device with, per piece.

    A protocol-3 run stopped midway and resumed (``study.run``) lists its ``pieces``, each with its own
    wall time and neighbours; other runs are one piece.
    """
    return sum(p["wall_seconds"] / p["concurrent_runs"] for p in run.get("pieces") or [run])


def machine_hours(runs: list[dict]) -> dict[str, float]:
    """Hours of each device the finished runs took (``machine_seconds``)."""
    hours: dict[str, float] = {}
    for r in runs:
        if not r.get("quick"):
            hours[r["device"]] = hours.get(r["device"], 0.0) + machine_seconds(r) / 3600
    return hours
