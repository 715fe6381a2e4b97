"""The comparison study, protocol 3: BitFit against other ways to fine-tune MRPC, each tuned the same way.

The rule. Every run trains on MRPC train minus a stratified 10 % validation split
(``lab.data.selection_splits``), scores validation and GLUE dev after every epoch and logs both,
with its training seconds, into its run file. Epoch and learning rate are chosen on validation
MCC by ``lab.selection`` (dev is only reported). What protocol 3 adds to protocol 2:

* **training length never decides**: every run stops when validation MCC has not improved for
  ``PATIENCE`` epochs, under a cap (``MAX_EPOCHS``) that is there only to bound a run; the
  warm-up is a fixed number of steps (half an epoch), so the cap does not change the recipe;
* **the tuning seed stays out**: the grid runs at seed 0; the reported seeds are 1..N;
* **the head is decided first**: the offline MiniLM's pooler was never trained, so stage
  ``head`` trains BitFit (lr 1e-3, seeds 1-3) with the [CLS] head and with masked mean
  pooling and keeps the head with the higher mean validation MCC; every method then uses it.

Stages, each waiting for the one before: ``head`` -> ``grid`` (every headline method at every
rate of its grid, seed 0) -> ``seeds`` (the chosen rate, seeds 1..N) -> ``task`` (BitFit and Full
FT on the other tasks of ``TASK_STUDY``, MRPC's head and chosen rates, seeds 1..3) -> ``cost``
(BitFit and Full FT alone on the machine for two epochs: the seconds an epoch costs, for
time-to-accuracy). The other tasks reuse MRPC's rates rather than a grid of their own: a grid per
task would triple their runs, beyond the 4 CPU-hours they are given. BitFit runs also save their
pack (``<out>/packs/``): one base, a small pack per task, and the bias groups each task moved.
Each run happens in its own process and writes ``<out>/runs/<run>.json`` whole when it ends, so a
stopped study goes on where it stopped. A run checkpoints every epoch in ``<out>/partial/<run>/``
(not kept in git): a run stopped midway goes on from its last epoch and ends as an unbroken run
would (``lab.training.resume_point``); its run file lists the ``pieces`` it ran in.

    python -m study.run --plan                      # every run, done or not, and the CPU hours left
    python -m study.run --jobs 2 --threads 1        # run what is left on a 2-core CPU
    python -m study.run --quick --out DIR           # smoke test (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from statistics import mean

import torch
from datasets import DatasetDict
from transformers import TrainerCallback

import bitfit_utils as bu
from lab import packs
from lab.data import load_task, selection_splits, tokenize_task
from lab.heads import POOLINGS, set_pooling
from lab.models import OFFLINE_MODEL, load_model
from lab.selection import MAX_EPOCHS, PATIENCE, SELECT_BY, best_entry
from lab.tasks import DEFAULT_BATCH_SIZE, get_task
from lab.training import ALWAYS_METRICS, half_epoch_warmup, history_frame, make_trainer, resume_point, set_seed
from lab.registry import HEADLINE, METHODS, checkpoint_bytes, setup
from study.p2_protocol import machine_hours, machine_seconds  # the same hours for both protocols
from study.tools import git_commit, peak_rss, run_pending, write_run

PROTOCOL = 3
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "v3"
BATCH_SIZE = DEFAULT_BATCH_SIZE
#: The head check: BitFit at this rate, these seeds, each head of ``POOLINGS``.
HEAD_CHECK = {"method": "bitfit", "lr": 1e-3, "seeds": (1, 2, 3)}
#: Epochs of a cost run (no early stop): what an epoch costs with the machine to itself.
COST_EPOCHS = 2
COST_METHODS = ("bitfit", "full")
#: The methods a smoke test (``--quick``) goes through: BitFit (bias groups, writes packs) and LoRA (a peft
#: adapter). Frozen's head-only setup is checked by tests/test_selection.py.
QUICK_METHODS = ("bitfit", "lora")
#: The other tasks: how many training examples to keep (stratified, the same for every run; None: all).
#: SST-2's 67k sentences would cost five MRPC epochs each; 8,000 keep an epoch near MRPC's cost.
TASK_STUDY: dict[str, int | None] = {"sst2": 8000, "cola": None}
TASK_METHODS = ("bitfit", "full")
TASK_SEEDS = 3
#: Machine hours each stage was given (``stage_of``): ``--plan`` and the results page compare against them.
BUDGET_HOURS = {"mrpc": 9.0, "tasks": 4.0}
#: Until runs of a method have measured them: machine seconds per epoch, and epochs a run trains.
EPOCH_S_GUESS = {"frozen": 60.0, "full": 130.0}
EPOCH_S_DEFAULT = 100.0
EPOCHS_GUESS = {"frozen": 8, "full": 6}
EPOCHS_DEFAULT = 11


def spec_name(spec: dict) -> str:
    lr = f"lr{spec['lr']:g}" if spec["lr"] is not None else "lr?"
    head = spec["head"] or "?"
    task = spec.get("task", "mrpc")
    prefix = "" if task == "mrpc" else f"{task}-"
    return f"{prefix}{spec['part']}-{spec['method']}-{head}-{lr}-s{spec['seed']}"


def task_of(run: dict) -> str:
    return run.get("task", "mrpc")


# ----- what the finished runs decided ------------------------------------------------


def kept(run: dict) -> dict:
    """The epoch the rule keeps in a finished run (``lab.selection.best_entry`` on its log)."""
    return best_entry(run["log"], SELECT_BY)


def choose_head(runs: list[dict], quick: bool = False) -> str | None:
    """The head with the higher mean validation MCC over the head check's seeds (ties: ``"cls"``); None until complete."""
    seeds = HEAD_CHECK["seeds"][:1] if quick else HEAD_CHECK["seeds"]
    scores: dict[str, list[float]] = {h: [] for h in POOLINGS}
    for r in runs:
        if r["part"] == "head" and task_of(r) == "mrpc":
            scores[r["head"]].append(kept(r)["validation_mcc"])
    if any(len(v) < len(seeds) for v in scores.values()):
        return None
    return max(POOLINGS, key=lambda h: (mean(scores[h]), h == "cls"))


def grid_lrs(method: str, quick: bool) -> tuple[float, ...]:
    return METHODS[method].lrs[:1] if quick else METHODS[method].lrs


def choose_lrs(runs: list[dict], head: str | None, quick: bool = False) -> dict[str, float]:
    """The chosen rate of every headline method whose grid is complete: best validation MCC at the kept epoch."""
    chosen = {}
    for method in QUICK_METHODS if quick else HEADLINE:
        grid = {r["lr"]: r for r in runs
                if r["part"] == "grid" and task_of(r) == "mrpc" and r["method"] == method and r["head"] == head}
        if grid and set(grid) >= set(grid_lrs(method, quick)):
            best = max(grid.values(), key=lambda r: (kept(r)["validation_mcc"], kept(r)["validation_accuracy"], -r["lr"]))
            chosen[method] = best["lr"]
    return chosen


def plan(runs: list[dict], quick: bool = False) -> list[dict]:
    """Every run of protocol 3; ``head`` or ``lr`` is None where it waits for an earlier stage."""
    head = choose_head(runs, quick)
    chosen = choose_lrs(runs, head, quick) if head else {}
    check_seeds = HEAD_CHECK["seeds"][:1] if quick else HEAD_CHECK["seeds"]
    specs = [{"part": "head", "method": HEAD_CHECK["method"], "head": h, "lr": HEAD_CHECK["lr"], "seed": s}
             for s in check_seeds for h in POOLINGS]
    methods = QUICK_METHODS if quick else HEADLINE
    specs += [{"part": "grid", "method": m, "head": head, "lr": lr if head else None, "seed": 0}
              for m in methods for lr in grid_lrs(m, quick)]
    for m in methods:
        n = 1 if quick else METHODS[m].seeds
        specs += [{"part": "seeds", "method": m, "head": head, "lr": chosen.get(m), "seed": s} for s in range(1, n + 1)]
    for s in specs:
        s["name"] = spec_name(s)
    done = {r["name"] for r in runs}
    mrpc_done = all(s["name"] in done for s in specs)  # the MRPC study goes first
    for task in TASK_STUDY:
        specs += [{"part": "task", "task": task, "method": m, "head": head if mrpc_done else None,
                   "lr": chosen.get(m) if mrpc_done else None, "seed": s}
                  for m in TASK_METHODS if m in methods for s in range(1, (1 if quick else TASK_SEEDS) + 1)]
    specs += [{"part": "cost", "method": m, "head": head, "lr": chosen.get(m), "seed": 1} for m in COST_METHODS
              if m in methods]
    for s in specs:
        s["name"], s["quick"] = spec_name(s), quick
    return specs


def ready(spec: dict) -> bool:
    return spec["head"] is not None and spec["lr"] is not None


# ----- one run ------------------------------------------------------------------------


def task_data(task: str, quick: bool = False):
    """The splits a run of ``task`` trains on: ``selection_splits`` of its train set (subsampled per ``TASK_STUDY``)."""
    data = load_task(task)
    keep = TASK_STUDY.get(task)
    if quick:  # a smoke test: the first rows (a stratified split of SST-2's 67k sentences takes ~20 s)
        data["train"] = data["train"].select(range(min(640, len(data["train"]))))
    elif keep and keep < len(data["train"]):
        data["train"] = data["train"].train_test_split(train_size=keep, seed=0, stratify_by_column="label")["train"]
    return selection_splits(data)


def run_one(spec: dict, quick: bool, jobs: int = 1, out: Path | None = None) -> dict:
    """Train one configuration; return its settings and per-epoch log (``jobs``: runs sharing the machine).

    A BitFit run also writes its pack to ``out/packs/<name>.safetensors`` when ``out`` is given.
    """
    task = task_of(spec)
    set_seed(spec["seed"])
    splits = task_data(task, quick)
    model, tokenizer = load_model(OFFLINE_MODEL, verbose=False, task=task)
    set_pooling(model, spec["head"])
    total = bu.count_parameters(model)[1]
    model, trainable = setup(model, spec["method"], spec["seed"])
    if quick:  # a few examples of each split, taken before tokenizing (SST-2 has 67,349 training sentences)
        splits = DatasetDict({k: splits[k].select(range(n)) for k, n in (("train", 32), ("validation", 16), ("dev", 16))})
    encoded = tokenize_task(splits, tokenizer, task)
    train, validation, dev = encoded["train"], encoded["validation"], encoded["dev"]
    cost = spec["part"] == "cost"
    max_epochs = COST_EPOCHS if cost else (2 if quick else MAX_EPOCHS)
    warmup_steps = half_epoch_warmup(len(train), BATCH_SIZE)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) if out is None or cost else out / "partial" / spec["name"]
        pieces = start_piece(folder, {**spec, "max_epochs": max_epochs, "warmup_steps": warmup_steps}, jobs)
        trainer = make_trainer(model, tokenizer, train, {"validation": validation, "dev": dev}, folder,
                               learning_rate=spec["lr"], epochs=max_epochs, batch_size=BATCH_SIZE, seed=spec["seed"],
                               warmup=warmup_steps, select_by=None if cost else SELECT_BY,
                               patience=None if cost else PATIENCE, task=task, checkpoints=not cost)
        trainer.add_callback(PieceClock(folder, pieces))
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_point(folder))
        pieces[-1].update(wall_seconds=time.perf_counter() - start, to_epoch=trainer.state.epoch)
    history = history_frame(trainer)
    metrics = ("loss",) + tuple(dict.fromkeys(get_task(task).metrics + ALWAYS_METRICS))
    log = [{"epoch": float(e), "train_seconds": row["train_seconds"], "train_loss": row.get("train_loss"),
            **{f"{split}_{metric}": row[f"eval_{split}_{metric}"] for split in ("validation", "dev")
               for metric in metrics}}
           for e, row in history.iterrows()]
    labels, dev_labels = validation["label"], dev["label"]
    kept_epoch = best_entry(log, SELECT_BY)["epoch"]
    if out is not None and spec["method"] == "bitfit" and not cost:  # the model holds the kept epoch
        (out / "packs").mkdir(parents=True, exist_ok=True)
        packs.save_bias_checkpoint(model, out / "packs" / f"{spec['name']}.safetensors", task=task,
                                   run=spec["name"], kept_epoch=kept_epoch, head=spec["head"],
                                   dev_at_kept=best_entry(log, SELECT_BY))
    return {**spec, "task": task, "protocol": PROTOCOL, "commit": git_commit(), "max_epochs": max_epochs, "patience": PATIENCE,
            "patience_counts_from": "the first epoch with validation MCC above 0",
            "warmup_steps": warmup_steps, "last_epoch": log[-1]["epoch"], "kept_epoch": kept_epoch,
            "kept_at_cap": kept_epoch >= max_epochs, "precision": "float32", "steps": trainer.state.global_step,
            "train_pairs": len(train), "validation_pairs": len(validation), "dev_pairs": len(dev),
            "validation_majority": max(sum(labels), len(labels) - sum(labels)) / len(labels),
            "dev_positive_share": sum(dev_labels) / len(dev_labels),
            "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
            "checkpoint_bytes": checkpoint_bytes(model, spec["method"]),
            "wall_seconds": sum(p["wall_seconds"] for p in pieces), "pieces": pieces,
            "peak_rss_mib": peak_rss() / 2**20, "threads": torch.get_num_threads(), "concurrent_runs": jobs,
            "loadavg_1min": [load_before[0], os.getloadavg()[0]],
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            **packs.library_versions(), "log": log}


def start_piece(folder: Path, settings: dict, jobs: int) -> list[dict]:
    """The pieces a run has run in so far, this one last; a checkpoint of other settings is discarded.

    ``folder/pieces.json`` lists each earlier piece up to its last checkpoint (what came after it was
    lost and is redone); ``folder/settings.json`` the run's settings, which a resumed piece must share.
    """
    settings_file, pieces_file = folder / "settings.json", folder / "pieces.json"
    if resume_point(folder) and not (settings_file.is_file() and json.loads(settings_file.read_text()) == settings):
        print(f"{folder}: its checkpoint was made with other settings; the run starts again", flush=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=1))
    earlier = json.loads(pieces_file.read_text()) if resume_point(folder) and pieces_file.is_file() else []
    return earlier + [{"commit": git_commit(), "from_epoch": 0.0, "to_epoch": 0.0, "wall_seconds": 0.0,
                       "threads": torch.get_num_threads(), "concurrent_runs": jobs}]


class PieceClock(TrainerCallback):
    """Record this piece's first epoch and, at every checkpoint, its wall time so far in ``pieces.json``."""

    def __init__(self, folder: Path, pieces: list[dict]):
        self.folder, self.pieces, self.start = folder, pieces, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.pieces[-1]["from_epoch"] = float(state.epoch or 0.0)

    def on_save(self, args, state, control, **kwargs):
        self.pieces[-1].update(wall_seconds=time.perf_counter() - self.start, to_epoch=float(state.epoch))
        tmp = self.folder / "pieces.json.partial"
        tmp.write_text(json.dumps(self.pieces, indent=1))
        tmp.replace(self.folder / "pieces.json")


# ----- the plan and the runner -----------------------------------------------------------


def cut_by_cap(run: dict) -> bool:
    """True for a run that an older, lower cap stopped before the stopping rule could: it is run again.

    A run that the rule stopped (``PATIENCE`` epochs after its kept one) is unchanged by a higher cap:
    its warm-up, learning rates and data order up to that epoch do not depend on the cap
    (tests/test_training.py checks it), so it stands.
    """
    if run.get("quick") or run["part"] == "cost" or run["max_epochs"] >= MAX_EPOCHS:
        return False
    return run["last_epoch"] >= run["max_epochs"] and run["last_epoch"] - run["kept_epoch"] < PATIENCE


def read_runs(folder: Path) -> list[dict]:
    """The finished runs that count: every ``runs/*.json`` except those an older cap cut short (``cut_by_cap``)."""
    runs = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
    return [r for r in runs if not cut_by_cap(r)]


def retired_runs(folder: Path) -> list[dict]:
    """Runs that no longer count but used the machine: cut by an older cap, kept in ``runs/retired/`` once redone."""
    files = [*sorted((folder / "runs").glob("*.json")), *sorted((folder / "runs" / "retired").glob("*.json"))]
    runs = [json.loads(p.read_text()) for p in files]
    return [r for r in runs if cut_by_cap(r)]


def retire_cut_runs(folder: Path) -> None:
    """Move every run an older cap cut short into ``runs/retired/`` (kept, with its machine time) before it is redone."""
    for path in sorted((folder / "runs").glob("*.json")):
        if cut_by_cap(json.loads(path.read_text())):
            (folder / "runs" / "retired").mkdir(exist_ok=True)
            path.replace(folder / "runs" / "retired" / path.name)


def spent_hours(folder: Path) -> dict[str, float]:
    """Machine hours of every run the study has finished, those it re-runs included."""
    return machine_hours(read_runs(folder) + retired_runs(folder))


def epoch_seconds(runs: list[dict]) -> dict[str, float]:
    """Machine seconds per epoch (training and evaluations) per method: wall / epochs / runs sharing the CPU."""
    seconds: dict[str, list[float]] = {}
    for r in runs:
        if r["device"] == "cpu" and not r.get("quick") and r["part"] != "cost":
            seconds.setdefault(r["method"], []).append(machine_seconds(r) / r["last_epoch"])
    return {m: mean(v) for m, v in seconds.items()}


def epochs_expected(spec: dict, runs: list[dict], by_method: dict[str, float]) -> float:
    """Epochs a planned run is expected to train: the mean of finished runs of its method at its rate (the
    stopping rule's length depends on the rate), else of its method (``by_method``), else a guess."""
    if spec["part"] == "cost":
        return COST_EPOCHS
    same = [r["last_epoch"] for r in runs if not r.get("quick") and r["part"] != "cost"
            and r["method"] == spec["method"] and r["lr"] == spec["lr"]]
    if same:
        return mean(same)
    return by_method.get(spec["method"], EPOCHS_GUESS.get(spec["method"], EPOCHS_DEFAULT))


def epochs_run(runs: list[dict]) -> dict[str, float]:
    """Mean epochs a finished (non-cost) run of each method trained before the stopping rule ended it."""
    epochs: dict[str, list[float]] = {}
    for r in runs:
        if not r.get("quick") and r["part"] != "cost":
            epochs.setdefault(r["method"], []).append(r["last_epoch"])
    return {m: mean(v) for m, v in epochs.items()}


def stage_of(run: dict) -> str:
    """``"mrpc"`` for the MRPC study (head, grid, seeds, cost), ``"tasks"`` for the other tasks' runs."""
    return "mrpc" if task_of(run) == "mrpc" else "tasks"


def estimate(folder: Path, quick: bool = False) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Every planned run with its state and machine seconds (measured where runs have finished, else guessed),
    and per stage (:func:`stage_of`) the hours spent (retired runs included), left and budgeted."""
    runs, retired = read_runs(folder), retired_runs(folder)
    per_epoch, n_epochs = epoch_seconds(runs + retired), epochs_run(runs)  # a retired run's epochs cost the same
    done, redo = {r["name"] for r in runs}, {r["name"] for r in retired}
    rows = []
    head = choose_head(runs, quick)
    chosen = choose_lrs(runs, head, quick) if head else {}
    for spec in plan(runs, quick):
        m = spec["method"]
        # a task run waits for MRPC to finish, then takes MRPC's chosen rate: price it at that rate already
        epochs = epochs_expected({**spec, "lr": spec["lr"] if spec["lr"] is not None else chosen.get(m)}, runs, n_epochs)
        state = "done" if spec["name"] in done else ("redo" if spec["name"] in redo else "to run") if ready(spec) \
            else "waits"
        rows.append({"state": state, "name": spec["name"], "stage": stage_of(spec),
                     "seconds": per_epoch.get(m, EPOCH_S_GUESS.get(m, EPOCH_S_DEFAULT)) * epochs})
    stages = {}
    for stage, budget in BUDGET_HOURS.items():
        spent = sum(machine_hours([r for r in runs + retired if stage_of(r) == stage]).values())
        left = sum(r["seconds"] for r in rows if r["stage"] == stage and r["state"] != "done") / 3600
        stages[stage] = {"spent": spent, "left": left, "budget": budget}
    return rows, stages


def show_plan(folder: Path, quick: bool) -> None:
    """Print every run, done or not, and per stage the CPU hours spent and left against its budget."""
    runs = read_runs(folder)
    rows, stages = estimate(folder, quick)
    print("\n".join(f"{r['state']:7} {r['name']:42} ~{r['seconds'] / 60:5.1f} machine-min" for r in rows))
    per_epoch = epoch_seconds(runs + retired_runs(folder))
    basis = ", ".join(f"{m} {s:.0f} s" for m, s in sorted(per_epoch.items())) or "nothing measured yet: guesses"
    spent, left = sum(v["spent"] for v in stages.values()), sum(v["left"] for v in stages.values())
    print(f"\nprotocol {PROTOCOL}: {sum(r['state'] == 'done' for r in rows)} of {len(rows)} runs done; spent "
          f"{spent:.1f} machine-hours, about {left:.1f} left, {spent + left:.1f} in all (machine seconds per epoch: "
          f"{basis}; epochs per run: the mean of finished runs of the method at that rate, else of the method). "
          f"Head: {choose_head(runs, quick) or 'not chosen yet'}.")
    for stage, v in stages.items():
        total = v["spent"] + v["left"]
        verdict = f"over by {total - v['budget']:.1f}" if total > v["budget"] else "within it"
        print(f"  {stage}: spent {v['spent']:.1f} + about {v['left']:.1f} left = {total:.1f} machine-hours, "
              f"budget {v['budget']:g} ({verdict})")


def run_left(folder: Path, quick: bool, jobs: int, threads: int | None) -> None:
    """Run every ready run that has no file yet; repeat as stages complete. Cost runs go last, one at a time."""
    def pending() -> list[dict]:
        retire_cut_runs(Path(folder))
        done = {p.stem for p in (Path(folder) / "runs").glob("*.json")}
        return [s for s in plan(read_runs(folder), quick) if ready(s) and s["name"] not in done]

    run_pending("study.run", folder, pending, lambda s: s["part"] == "cost", quick, jobs, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data, at most two epochs (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plan", action="store_true", help="list every run, done or not, and the time left")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one run, one file, written whole or not at all
        if args.threads:
            torch.set_num_threads(args.threads)
        spec = json.loads(args.run)
        write_run(args.out, spec["name"], run_one(spec, args.quick, args.jobs, Path(args.out)))
        shutil.rmtree(Path(args.out) / "partial" / spec["name"], ignore_errors=True)  # its checkpoints served
        return
    if args.plan:
        show_plan(args.out, args.quick)
        return
    run_left(args.out, args.quick, args.jobs, args.threads)


if __name__ == "__main__":
    main()
