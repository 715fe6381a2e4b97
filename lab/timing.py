"""How long a notebook's trainings will take here, told before any of them starts.

A few optimizer steps of each method are timed on this device (``measure_step_costs``) and
multiplied by the steps and evaluations each planned training will run (``plan_training``).
This is the lab's one time estimator: 02's section 0 and 01's look ahead both use it through
``lab.recipe.forecast``, and ``check_long_run`` stops a notebook it says would take over two hours.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lab.models import OFFLINE_MODEL, get_device
from lab.tasks import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, get_task

#: A notebook whose trainings are estimated longer than this (seconds) stops before training
#: unless the student says it may run (02's ALLOW_LONG_RUN). Two hours: 02 with the study's recipe on the
#: offline MiniLM can approach an hour on a 2-core CPU and must not be stopped; BERT-base on a CPU takes
#: several times longer and is.
LONG_RUN_S = 7200.0


def faster_paths(device: str, model_name: str | None = None, demo: bool = False) -> list[str]:
    """The one-line switches that make the lab's trainings shorter: only those not already in use.

    The demo is offered on a CPU when it is off (on a GPU it changes nothing), the offline model when
    another is in use, a GPU when the device is a CPU.
    """
    paths = []
    if device == "cpu" and not demo:
        paths.append("the instructor demo: BITFIT_DEMO=1 (or DEMO = True in 02's settings cell)")
    if model_name != OFFLINE_MODEL:
        paths.append(f"the offline model: BITFIT_MODEL={OFFLINE_MODEL} (or MODEL_NAME = \"{OFFLINE_MODEL}\"; 6 "
                     "layers instead of 12)")
    if device == "cpu":
        paths.append("a GPU, e.g. Colab: Runtime > Change runtime type > GPU")
    return paths


@dataclass(frozen=True)
class StepCosts:
    """Measured costs on this device: seconds of one training step per method, of one evaluated pair."""

    step_seconds: dict[str, float]  # method -> seconds of one optimizer step of ``batch_size`` pairs
    eval_pair_seconds: float  # seconds to score one pair (forward pass, no gradient)
    batch_size: int
    probe_pairs: int  # pairs per timed step; step_seconds are scaled from them to ``batch_size``
    tokens: int  # length of every probe pair: the mean length of the training pairs
    timed_steps: int
    device: str
    model_name: str = ""  # the model measured (``name_or_path``)


@dataclass(frozen=True)
class PlannedTraining:
    """One training a notebook will run: its optimizer steps and its evaluations."""

    label: str
    method: str  # a key of ``StepCosts.step_seconds``
    steps: int
    evals: int
    eval_pairs: int  # pairs scored at each evaluation (validation and dev together)


def plan_training(label: str, method: str, train_pairs: int, batch_size: int, epochs: int,
                  eval_pairs: int) -> PlannedTraining:
    """The steps and evaluations of ``epochs`` epochs over ``train_pairs``, scored once per epoch."""
    return PlannedTraining(label, method, math.ceil(train_pairs / batch_size) * epochs, epochs, eval_pairs)


def planned_seconds(step_seconds: float, steps: int, evals: int, eval_pairs: int, eval_pair_seconds: float) -> float:
    """Training steps times their measured cost, plus every evaluation's pairs times theirs."""
    return step_seconds * steps + evals * eval_pairs * eval_pair_seconds


def estimate_trainings(costs: StepCosts, plans: list[PlannedTraining]) -> dict[str, float]:
    """Estimated seconds of each planned training, by its label."""
    return {p.label: planned_seconds(costs.step_seconds[p.method], p.steps, p.evals, p.eval_pairs,
                                     costs.eval_pair_seconds) for p in plans}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def time_estimate_text(costs: StepCosts, plans: list[PlannedTraining], model_name: str,
                       optional: tuple[str, ...] = (), demo: bool = False) -> str:
    """What a student reads before any training: each training's estimate, the total, the faster paths.

    Args:
        optional: labels of trainings that run only if the student does them (an exercise); they
            are listed but not added to the total.
        demo: the instructor demo is running (it is then not offered as a faster path).
    """
    estimates = estimate_trainings(costs, plans)
    total = sum(s for label, s in estimates.items() if label not in optional)
    width = max(len(p.label) for p in plans)
    scaled = f", scaled to batch {costs.batch_size}" if costs.probe_pairs != costs.batch_size else ""
    lines = [f"Measured on this {costs.device} with {model_name} (median of {costs.timed_steps} optimizer steps per "
             f"method, {costs.probe_pairs} pairs of {costs.tokens} tokens, the mean training pair{scaled}): "
             + ", ".join(f"{m} {s:.2f} s" for m, s in costs.step_seconds.items())
             + f" per step; scoring {1000 * costs.eval_pair_seconds:.1f} ms per pair."]
    for p in plans:
        lines.append(f"  {p.label:<{width}}  {p.steps:>5} steps + {p.evals} evaluation{'s' if p.evals != 1 else ''} of "
                     f"{p.eval_pairs} pairs"
                     f"  ~ {_minutes(estimates[p.label])}" + ("  (only if you do it)" if p.label in optional else ""))
    lines.append(f"Trainings of this notebook: about {_minutes(total)} here (loading and the other cells add a "
                 "minute or two).")
    if total > LONG_RUN_S:
        lines.append(f"That is more than {_minutes(LONG_RUN_S)}: the training cells will not start unless "
                     "ALLOW_LONG_RUN = True (02's settings cell).")
    faster = faster_paths(costs.device, model_name, demo)
    if faster:
        lines.append("Faster: " + " | ".join(faster))
    return "\n".join(lines)


class LongRunStopped(RuntimeError):
    """The estimate says more than ``LONG_RUN_S`` and the student has not allowed it. Jupyter shows the message only."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def check_long_run(costs: StepCosts, plans: list[PlannedTraining], allowed: bool,
                   optional: tuple[str, ...] = ()) -> None:
    """Stop the notebook (an exception stops "Run All") before a training of more than ``LONG_RUN_S``.

    Raises:
        LongRunStopped: the non-optional trainings add up to more than ``LONG_RUN_S`` and ``allowed`` is False.
    """
    total = sum(s for label, s in estimate_trainings(costs, plans).items() if label not in optional)
    if total > LONG_RUN_S and not allowed:
        raise LongRunStopped(
            f"about {_minutes(total)} of training on this {costs.device}. Take a faster path ("
            + "; ".join(faster_paths(costs.device, costs.model_name)) + "), or set ALLOW_LONG_RUN = True in 02's settings cell "
            "(or BITFIT_ALLOW_LONG_RUN=1) and run again.")


def measure_step_costs(model, tokenizer, pairs, methods: tuple[str, ...] = ("frozen", "bitfit", "full"), *,
                       batch_size: int = DEFAULT_BATCH_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
                       probe_pairs: int | None = None, steps: int = 3, bf16: bool = False, clock=time.perf_counter,
                       task: str = "mrpc") -> StepCosts:
    """Time a few optimizer steps of each method, and the scoring of pairs, on this device.

    A probe batch of real training pairs, each cut or padded to the mean length of (up to 256 of)
    ``pairs`` like the batches the Trainer groups by length, goes through one untimed step per
    method (allocations, caches) and then ``steps`` timed ones; the median step counts, so that
    one step slowed by another program does not. The steps use AdamW with learning rate 0: the
    weights do not change, and ``requires_grad`` is put back as it was.

    Args:
        model: a sequence classifier (``load_model``); moved to the lab's device.
        pairs: a dataset with ``sentence1`` and ``sentence2`` (MRPC train).
        methods: names for ``lab.methods.setup_method``.
        probe_pairs: pairs per timed step (default: ``batch_size``); the time is scaled to
            ``batch_size`` pairs (smaller probes overestimate: a step has fixed costs too).
        steps: timed steps per method.
        bf16: time the steps under bf16 autocast, as ``make_trainer(bf16=True)`` trains.
        clock: seconds as a float (tests pass a fake clock).
        task: whose text columns make the probe batch (a pair or one sentence; ``lab.tasks``).
    """
    import statistics

    from lab.methods import setup_method

    device = get_device()
    probe = probe_pairs or batch_size
    sample = pairs.select(range(min(len(pairs), 256)))
    columns = [list(sample[c]) for c in get_task(task).text_columns]  # a pair, or one sentence
    lengths = [len(ids) for ids in tokenizer(*columns, truncation=True, max_length=max_length)["input_ids"]]
    tokens = max(1, round(sum(lengths) / len(lengths)))
    picks = [i % len(columns[0]) for i in range(probe)]
    batch = tokenizer(*[[c[i] for i in picks] for c in columns], truncation=True, max_length=tokens,
                      padding="max_length", return_tensors="pt").to(device)
    labels = torch.tensor([i % 2 for i in range(probe)], device=device)
    model.to(device)
    was_trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def timed(work) -> float:
        work()  # untimed: the first call pays one-off costs
        seconds = []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(clock() - start)
        return statistics.median(seconds)

    step_seconds = {}
    try:
        model.train()
        for method in methods:
            setup_method(model, method)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)

            def step():
                with autocast():
                    loss = model(**batch, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step_seconds[method] = timed(step) * batch_size / probe
            del optimizer
        model.eval()
        with torch.no_grad(), autocast():
            eval_pair_seconds = timed(lambda: model(**batch)) / probe
    finally:
        for name, param in model.named_parameters():
            param.requires_grad = was_trainable[name]
            param.grad = None
        model.eval()
    return StepCosts(step_seconds, eval_pair_seconds, batch_size, probe, tokens, steps, device.type,
                     getattr(model, "name_or_path", ""))

