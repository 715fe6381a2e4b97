"""Protocol 2's runner: BitFit against other ways to fine-tune on MRPC, each tuned the same way.

The rule (``study.p2_protocol``). Every run trains on MRPC train minus a stratified 10 % validation split
(``lab.data.selection_splits``), scores validation and GLUE dev after every epoch and logs both,
with its training seconds, into its run file. The learning rate and the epoch are chosen on
**validation MCC** (a constant prediction scores 0, so the majority class cannot win it); dev is
reported only at the chosen point, so what is reported is never what was selected on.

Stages (``--plan`` lists every run, which are done, and the CPU time left):

* ``grid``: each headline method at each rate of its grid, seed 0 (the same number of trials each);
* ``seeds``: the chosen rate with more seeds (5 in all for BitFit, Full FT and LoRA, 3 for the rest);
* ``ablation``: variants of BitFit or LoRA at the chosen recipe of the method they change, 3 seeds;
* ``tta``: BitFit and Full FT at their chosen settings, run alone, for time-to-accuracy.

A stage waits until the grid it depends on is complete. Each run happens in its own process and
writes ``results/v2/runs/<run>.json`` the moment it ends (a killed run leaves nothing and is redone).

    python -m study.p2_run --plan              # what is done and left, CPU hours left
    python -m study.p2_run                     # run what is left (resumable)
    python -m study.p2_run --jobs 2 --threads 1   # a 2-core CPU (benchmarks/bench_parallel.py: faster)
    python -m study.p2_run --jobs 8            # a GPU: 8 runs at a time
    python -m study.p2_run --report            # tables and plot from the finished runs (study.p2_report)
    python -m study.p2_run --quick --out DIR   # smoke test (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import bitfit_utils as bu
from lab import packs
from lab.data import load_mrpc, selection_splits, tokenize_pairs
from lab.models import OFFLINE_MODEL, load_model
from lab.registry import METHODS, checkpoint_bytes, setup
from lab.training import history_frame, make_trainer, set_seed
from study.p2_protocol import (BATCH_SIZE, EPOCH_S_DEFAULT, EPOCH_S_GUESS, PROTOCOL, RESULTS, epoch_seconds,
                               machine_hours, plan, read_runs)
from study.p2_report import report
from study.tools import git_commit, peak_rss, run_pending, write_run


def run_one(spec: dict, quick: bool, jobs: int = 1) -> dict:
    """Train one configuration; return its settings and per-epoch log (``jobs``: runs sharing the machine)."""
    set_seed(spec["seed"])
    splits = selection_splits(load_mrpc())
    model, tokenizer = load_model(OFFLINE_MODEL, verbose=False)
    total = bu.count_parameters(model)[1]
    model, trainable = setup(model, spec["method"], spec["seed"])
    encoded = tokenize_pairs(splits, tokenizer)
    train, validation, dev = encoded["train"], encoded["validation"], encoded["dev"]
    if quick:
        train, validation, dev = train.select(range(64)), validation.select(range(32)), dev.select(range(32))
    epochs = 1 if quick else METHODS[spec["method"]].epochs
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(model, tokenizer, train, {"validation": validation, "dev": dev}, out,
                               learning_rate=spec["lr"], epochs=epochs, batch_size=BATCH_SIZE, seed=spec["seed"],
                               select_by=None, disable_tqdm=True)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    history = history_frame(trainer)
    log = [{"epoch": float(e), "train_seconds": row["train_seconds"], "train_loss": row.get("train_loss"),
            **{f"{split}_{metric}": row[f"eval_{split}_{metric}"] for split in ("validation", "dev")
               for metric in ("loss", "accuracy", "f1", "mcc")}}
           for e, row in history.iterrows()]
    labels, dev_labels = validation["label"], dev["label"]
    return {**spec, "protocol": PROTOCOL, "commit": git_commit(), "epochs": epochs, "steps": trainer.state.global_step,
            "train_pairs": len(train), "validation_pairs": len(validation), "dev_pairs": len(dev),
            "validation_majority": max(sum(labels), len(labels) - sum(labels)) / len(labels),
            "dev_positive_share": sum(dev_labels) / len(dev_labels),
            "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
            "checkpoint_bytes": checkpoint_bytes(model, spec["method"]), "wall_seconds": wall,
            "peak_rss_mib": peak_rss() / 2**20, "threads": torch.get_num_threads(), "concurrent_runs": jobs,
            "loadavg_1min": [load_before[0], os.getloadavg()[0]],
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            **packs.library_versions(), "log": log}


def show_plan(folder: Path, quick: bool) -> None:
    """Print every run, done or not, and the CPU hours left (from measured seconds per epoch)."""
    runs = read_runs(folder)
    measured = epoch_seconds(runs)
    done = {r["name"] for r in runs}
    left_s, rows = 0.0, []
    for spec in plan(runs, quick):
        method = spec["method"]
        per_epoch = measured.get(method) or measured.get(METHODS[method].parent or "") or EPOCH_S_GUESS.get(
            method, EPOCH_S_DEFAULT)
        seconds = per_epoch * METHODS[method].epochs
        state = "done" if spec["name"] in done else "waits for grid" if spec["lr"] is None else "to run"
        if state != "done":
            left_s += seconds
        rows.append(f"{state:15} {spec['name']:40} ~{seconds / 60:5.1f} min")
    print("\n".join(rows))
    n_done = sum(r.startswith("done") for r in rows)
    basis = ", ".join(f"{m} {s:.0f} s" for m, s in sorted(measured.items())) or "none measured yet: guesses"
    spent = ", ".join(f"{h:.1f} h of {d}" for d, h in sorted(machine_hours(runs).items())) or "nothing yet"
    print(f"\n{n_done} of {len(rows)} runs done; about {left_s / 3600:.1f} hours of this CPU left "
          f"(seconds per epoch measured: {basis}). Spent so far: {spent}.")


# ----- the runner -----------------------------------------------------------------


def run_left(folder: Path, quick: bool, jobs: int, threads: int | None) -> None:
    """Run every run whose settings are known and that has no file yet; repeat as grids complete."""
    def pending() -> list[dict]:
        done = {p.stem for p in (Path(folder) / "runs").glob("*.json")}
        return [s for s in plan(read_runs(folder), quick) if s["lr"] is not None and s["name"] not in done]

    run_pending("study.p2_run", folder, pending, lambda s: s["part"] == "tta", quick, jobs, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data, one epoch (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plan", action="store_true", help="list every run, done or not, and the time left")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plot")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one run, one file, written whole or not at all
        if args.threads:
            torch.set_num_threads(args.threads)
        spec = json.loads(args.run)
        write_run(args.out, spec["name"], run_one(spec, args.quick, args.jobs))
        return
    if args.plan:
        show_plan(args.out, args.quick)
        return
    if not args.report:
        run_left(args.out, args.quick, args.jobs, args.threads)
    report(args.out)


if __name__ == "__main__":
    main()
