"""Training the lab's way: a ``transformers.Trainer``, its metrics, history and time estimate.

The rule every training of the lab follows (02-Train and the study alike): the model learns
on the task's train split (MRPC unless told; ``lab.tasks``) minus a held-out validation split (``lab.data.selection_splits``); after every
epoch it is scored on validation and on GLUE dev; the epoch kept is the one with the best
**validation MCC**, and dev is only reported, never selected on.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from typing import Any, Callable, Iterator

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, PrinterCallback

from lab.heads import set_pooling
from lab.models import get_device, load_model
from lab.selection import SELECT_BY, best_entry, should_stop, tie_break_metric
from lab.tasks import DEFAULT_BATCH_SIZE, DEFAULT_SEED, TaskSpec, get_task



def set_seed(seed: int) -> None:
    """Seed python, numpy, torch and CUDA (via ``transformers.set_seed``)."""
    import transformers

    transformers.set_seed(seed)


#: Metrics every task reports besides its headline ones: MCC selects the epoch, accuracy breaks ties (lab.selection).
ALWAYS_METRICS = ("accuracy", "mcc")


def metrics_for(task: str | TaskSpec) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` function for ``Trainer`` scoring ``task`` the way GLUE does, plus MCC and accuracy.

    The task's headline metrics (``TaskSpec.metrics``: MRPC accuracy and F1, SST-2 and RTE accuracy,
    CoLA MCC) come first; ``accuracy`` and ``mcc`` are always added, since the lab's selection rule
    picks the epoch by validation MCC and breaks ties by accuracy. F1 is that of label 1.

    Returns:
        ``f(eval_pred) -> {"accuracy": ..., "f1": ..., "mcc": ...}`` (the metrics named above).
    """
    spec = get_task(task)
    names = tuple(dict.fromkeys(spec.metrics + ALWAYS_METRICS))

    def compute(eval_pred) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        logits, labels = eval_pred[0], eval_pred[1]
        logits = logits[0] if isinstance(logits, tuple) else logits
        preds = np.asarray(logits).argmax(axis=-1)
        scorers = {"accuracy": lambda: accuracy_score(labels, preds),
                   "f1": lambda: f1_score(labels, preds, pos_label=1, zero_division=0),
                   "mcc": lambda: matthews_corrcoef(labels, preds)}
        return {name: float(scorers[name]()) for name in names}

    compute.__name__ = f"compute_metrics_{spec.name}"
    compute.__doc__ = f"{spec.title} metrics for ``Trainer``: {', '.join(names)}."
    return compute


_MRPC_METRICS = metrics_for("mrpc")


def compute_metrics(eval_pred) -> dict[str, float]:
    """MRPC metrics for ``Trainer``: GLUE's accuracy and F1 (positive class: equivalent), and MCC (``metrics_for("mrpc")``)."""
    return _MRPC_METRICS(eval_pred)


def half_epoch_warmup(examples: int, batch_size: int) -> int:
    """The lab's warm-up in optimizer steps: half an epoch (at least one step), whatever the number of epochs."""
    return max(1, math.ceil(examples / batch_size) // 2)


def make_trainer(model, tokenizer, train_dataset, eval_dataset, output_dir: str | os.PathLike, *,
                 learning_rate: float, epochs: float, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = DEFAULT_SEED,
                 warmup: float | None = None, schedule: str = "constant_with_warmup", weight_decay: float = 0.0,
                 select_by: str | None = SELECT_BY, patience: int | None = None, group_by_length: bool = True,
                 bf16: bool = False, task: str | TaskSpec = "mrpc", checkpoints: bool = False, **overrides: Any):
    """A ``transformers.Trainer`` set up the lab's way.

    Evaluates every epoch (accuracy, F1, MCC), warms the learning rate up (from 0 to
    ``learning_rate`` over the first half epoch by default), pads per batch, groups batches by length, and logs the
    training seconds of every epoch (evaluation excluded). With ``select_by`` it keeps the
    best epoch's trainable tensors in memory and puts them back when training ends: only
    what trains is copied (a BitFit model's biases and head, not the whole model), and
    nothing is written to disk.

    Args:
        train_dataset: tokenized examples (``tokenize_task``; ``tokenize_pairs`` for MRPC).
        eval_dataset: one tokenized set, or a dict such as ``{"validation": ..., "dev": ...}``
            (metrics are then named ``eval_validation_mcc``, ``eval_dev_accuracy``, ...).
        output_dir: Trainer's working folder (no checkpoints are written there unless ``checkpoints``).
        learning_rate, epochs, batch_size, seed, weight_decay: the usual.
        warmup: steps with a rising learning rate (a share of all steps if below 1); None: half an
            epoch, the study's warm-up, whatever the number of epochs.
        schedule: after warm-up, ``"constant_with_warmup"`` (the lab's: the epoch is chosen on
            validation, which plays the part of a decay) or ``"linear"`` (decay to 0).
        select_by: the metric that picks the epoch, without ``eval_`` (``"validation_mcc"``;
            ``"mcc"`` for a single eval set), or None to keep the last epoch.
        patience: with ``select_by``, stop once this many epochs in a row brought no better one
            (``lab.selection``); None trains every epoch.
        bf16: train and evaluate under bf16 autocast (mixed precision; the weights stay float32).
        task: the task being trained; its metrics are computed (``metrics_for``). MRPC by default.
        checkpoints: save a checkpoint in ``output_dir`` after every epoch but the last (the two newest
            are kept), so that a run stopped midway goes on from it (``resume_point``) and ends as an
            unbroken run would (tests/test_training.py checks it, tensor for tensor).
        overrides: further ``TrainingArguments`` fields (``disable_tqdm=False`` brings back the Trainer's progress
            table; by default one line per epoch is printed instead).
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    if warmup is None:
        warmup = half_epoch_warmup(len(train_dataset), batch_size)
    settings = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=warmup,
        lr_scheduler_type=schedule,
        weight_decay=weight_decay,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch" if checkpoints else "no",
        save_total_limit=2,
        restore_callback_states_from_checkpoint=True,  # KeepBest's log and kept epoch, the seconds so far
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        seed=seed,
        bf16=bf16,
        report_to="none",
        disable_tqdm=True,  # no progress table (its "No log" columns): EpochLine prints one line per epoch
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=get_device().type == "cpu",  # lets torchrun/accelerate start CPU processes (gloo)
        ddp_find_unused_parameters=False,  # every trainable tensor is used in the forward pass
    )
    if checkpoints and not select_by:
        raise ValueError("checkpoints=True needs select_by: a checkpoint is complete once KeepBest has written "
                         "its kept tensors into it")
    args = TrainingArguments(**{**settings, **overrides})
    callbacks = [EpochSeconds()]
    if select_by:
        callbacks.append(KeepBest(f"eval_{select_by}", patience))
        if args.disable_tqdm:
            callbacks.append(EpochLine(f"eval_{select_by}"))
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=metrics_for(task), callbacks=callbacks)
    if args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # it prints every log as a dict: EpochLine says it in one line
    return trainer


class KeepBest(TrainerCallback, ExportableState):
    """Keep a copy of the trainable tensors at the epoch ``lab.selection`` picks; restore it at the end.

    The rule: best ``metric``, then best accuracy of the same split, then the earlier epoch. With
    ``patience`` training stops once that many evaluations in a row brought no better epoch.
    ``best_epoch`` and ``best_value`` say what was kept.

    With checkpoints on (``make_trainer(..., checkpoints=True)``) the kept tensors go into every
    checkpoint as ``kept_tensors.safetensors``, written last: a checkpoint without it is incomplete.
    The epoch that ends training is not checkpointed (a run stopped after it redoes that epoch).
    """

    def __init__(self, metric: str, patience: int | None = None):
        self.metric, self.patience = metric, patience
        self.best_value, self.best_epoch = -math.inf, None
        self.log: list[dict[str, float]] = []
        self._kept: dict[str, torch.Tensor] = {}

    def state(self) -> dict:
        """What a checkpoint records of this callback (the kept tensors go in their own file)."""
        return {"args": {"metric": self.metric, "patience": self.patience},
                "attributes": {"best_value": self.best_value, "best_epoch": self.best_epoch, "log": self.log}}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.best_epoch is not None and not self._kept:  # resumed: the checkpoint's kept tensors
            from safetensors.torch import load_file

            self._kept = load_file(Path(args.output_dir) / f"checkpoint-{state.global_step}" / KEPT_FILE)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        metrics = metrics or {}
        if metrics.get(self.metric) is None:
            return
        tie = tie_break_metric(self.metric)
        self.log.append({"epoch": round(state.epoch, 2), self.metric: metrics[self.metric],
                         tie: metrics.get(tie, 0.0)})
        best = best_entry(self.log, self.metric)
        if best is self.log[-1]:
            self.best_value, self.best_epoch = best[self.metric], best["epoch"]
            self._kept = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if should_stop(self.log, self.patience, self.metric):
            control.should_training_stop = True
        if control.should_training_stop or state.epoch >= args.num_train_epochs:
            control.should_save = False  # nothing is left to resume

    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        partial = folder / (KEPT_FILE + ".partial")
        save_file({n: t.contiguous() for n, t in self._kept.items()}, partial)
        partial.replace(folder / KEPT_FILE)  # atomic: the checkpoint is complete from here on

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._kept:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in self._kept.items():
                    params[name].copy_(tensor)
            state.log_history.append({"epoch": state.epoch, "kept_epoch": self.best_epoch,
                                      f"kept_{self.metric}": self.best_value})


#: The file a checkpoint of ``make_trainer(..., checkpoints=True)`` holds the kept tensors in, written last.
KEPT_FILE = "kept_tensors.safetensors"


def resume_point(folder: str | os.PathLike) -> str | None:
    """The newest complete checkpoint of ``make_trainer(..., checkpoints=True)`` in ``folder``, or None.

    Pass it to ``trainer.train(resume_from_checkpoint=...)`` on a trainer made the same way: the run goes
    on from the epoch after it, with its optimizer, schedule, random state and kept epoch.
    """
    folder = Path(folder)
    done = [p for p in folder.glob("checkpoint-*") if (p / KEPT_FILE).is_file()] if folder.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


class EpochSeconds(TrainerCallback, ExportableState):
    """Log the training seconds up to the end of every epoch (evaluations excluded) as ``train_seconds``."""

    def __init__(self):
        self.total, self._start = 0.0, None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"total": self.total}}

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.total += time.perf_counter() - self._start
        state.log_history.append({"epoch": round(state.epoch, 2), "train_seconds": self.total})


class EpochLine(TrainerCallback, ExportableState):
    """Print one line per evaluated epoch (the Trainer's progress table is off): the selecting score and the best so far."""

    def __init__(self, metric: str):
        self.metric, self.best = metric, None

    def state(self) -> dict:
        return {"args": {"metric": self.metric}, "attributes": {"best": self.best}}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        value = metrics[self.metric]
        better = self.best is None or value > self.best
        self.best = value if better else self.best
        print(f"epoch {state.epoch:g} of at most {args.num_train_epochs:g}: {self.metric.removeprefix('eval_')} "
              f"{value:.3f}" + ("  (best so far)" if better else f"  (best {self.best:.3f})"), flush=True)


_SKIP = ("runtime", "samples_per_second", "steps_per_second", "total_flos", "train_runtime", "train_samples",
         "train_steps", "grad_norm", "learning_rate", "kept_", "step")


def history_frame(trainer):
    """One row per epoch: ``train_loss``, ``train_seconds`` and every evaluation metric.

    Metric columns keep Trainer's names: ``eval_accuracy`` for a single eval set,
    ``eval_validation_mcc``, ``eval_dev_f1``, ... for a dict of them.
    """
    import pandas as pd

    rows: dict[float, dict[str, float]] = {}
    for entry in trainer.state.log_history:
        if "epoch" not in entry or "kept_epoch" in entry:
            continue
        row = rows.setdefault(round(entry["epoch"], 2), {"epoch": round(entry["epoch"], 2)})
        for key, value in entry.items():
            if key != "epoch" and not any(s in key for s in _SKIP) and key != "train_loss":
                row["train_loss" if key == "loss" else key] = value
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["epoch"])).set_index("epoch")


def train_method(method: str, model_name: str | None, tokenizer, train_dataset, eval_dataset,
                 output_dir: str | os.PathLike, *, learning_rate: float, epochs: int, batch_size: int, seed: int,
                 head: str = "cls", **trainer_kwargs):
    """02's section 3 for another method: seed, a fresh model, ``setup_method``, ``make_trainer``, ``train()``.

    Args:
        method: ``"frozen"``, ``"bitfit"`` or ``"full"`` (see :func:`lab.methods.setup_method`).
        model_name: passed to :func:`lab.models.load_model` (None: the lab's default model).
        head: what the classifier reads (:func:`lab.heads.set_pooling`), as in section 3.
        trainer_kwargs: anything else :func:`make_trainer` takes.

    Returns:
        The trained ``Trainer``; its model holds the kept epoch.
    """
    from lab.methods import setup_method

    set_seed(seed)  # the new classifier head is drawn at load time
    model, _ = load_model(model_name, verbose=False)
    set_pooling(model, head)
    setup_method(model, method)
    trainer = make_trainer(model, tokenizer, train_dataset, eval_dataset, output_dir, learning_rate=learning_rate,
                           epochs=epochs, batch_size=batch_size, seed=seed, **trainer_kwargs)
    trainer.train()
    return trainer


def kept_epoch(trainer) -> float | None:
    """The epoch whose tensors the model holds after ``train()`` (None: the last one, nothing selected)."""
    return next((e["kept_epoch"] for e in reversed(trainer.state.log_history) if "kept_epoch" in e), None)


def kept_row(trainer):
    """The history row of the epoch the model holds after ``train()``: the kept one, else the last."""
    history = history_frame(trainer)
    epoch = kept_epoch(trainer)
    return history.loc[epoch] if epoch is not None else history.iloc[-1]


def run_facts(trainer) -> dict[str, Any]:
    """What a trained run was, as JSON values for a pack's metadata (``lab.packs.save_bias_checkpoint(..., **facts)``).

    ``steps`` counts the optimizer steps up to the kept epoch (the tensors the model holds);
    ``first_epoch`` and ``at_kept_epoch`` are rows of ``history_frame``. Exercise 02.3 compares a
    new run with these facts when the trainer itself is gone (a restarted kernel).
    """
    history = history_frame(trainer)
    row = kept_row(trainer)
    state = trainer.state
    clean = lambda r: {k: float(v) for k, v in r.items() if v == v}  # noqa: E731 (NaN dropped: not JSON)
    return {"learning_rate": float(trainer.args.learning_rate), "batch_size": trainer.args.per_device_train_batch_size,
            "max_epochs": float(trainer.args.num_train_epochs), "kept_epoch": float(row.name),
            "steps": round(state.global_step * float(row.name) / state.epoch) if state.epoch else 0,
            "train_pairs": len(trainer.train_dataset), "first_epoch": clean(history.iloc[0]),
            "at_kept_epoch": clean(row)}


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["seconds"]`` holds the elapsed wall time."""
    result: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
