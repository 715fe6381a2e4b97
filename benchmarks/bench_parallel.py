"""How to use a small CPU for the study: one run with all threads, or one run per core side by side?

Trains BitFit on MRPC (offline MiniLM, batches of 32, the study's settings) for a fixed number of
steps, first as one process with ``--cores`` threads, then as ``--cores`` one-thread processes at
the same time, and prints both throughputs and their ratio, measured in this one run.

    python benchmarks/bench_parallel.py              # 40 steps a process
    python benchmarks/bench_parallel.py --steps 10   # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(steps: int) -> None:
    """Train ``steps`` BitFit steps; print seconds for the steps after the first (one-off costs excluded)."""
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    import bitfit_utils as bu
    from lab.data import load_mrpc, selection_splits, tokenize_pairs
    from lab.models import OFFLINE_MODEL, load_model
    from lab.training import make_trainer, set_seed
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    set_seed(0)
    model, tokenizer = load_model(OFFLINE_MODEL, verbose=False)
    bu.apply_bitfit(model)
    train = tokenize_pairs(selection_splits(load_mrpc()), tokenizer)["train"]
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(model, tokenizer, train, None, out, learning_rate=1e-3, epochs=1, select_by=None,
                               max_steps=steps, eval_strategy="no", disable_tqdm=True, logging_strategy="no")
        trainer.add_callback(clock)
        trainer.train()
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": clock.end - clock.start, "steps": steps - 1}))


def launch(threads: int, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--child", "--steps", str(steps), "--threads", str(threads)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"a child failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        child(args.steps)
        return
    alone = result(launch(args.cores, args.steps))
    together = [result(p) for p in [launch(1, args.steps) for _ in range(args.cores)]]
    one = alone["steps"] / alone["seconds"]
    many = sum(r["steps"] / r["seconds"] for r in together)
    print(f"one process, {args.cores} threads: {one:.3f} steps/s ({alone['seconds'] / alone['steps']:.2f} s a step)")
    print(f"{args.cores} processes, 1 thread each: {many:.3f} steps/s in all "
          f"({', '.join(format(r['seconds'] / r['steps'], '.2f') for r in together)} s a step each)")
    print(f"ratio (side by side / one process): {many / one:.2f}  -> "
          + ("run one-thread runs side by side (--jobs N --threads 1)" if many > one else "run one run at a time"))


if __name__ == "__main__":
    main()
