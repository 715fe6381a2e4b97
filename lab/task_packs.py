"""A BitFit pack for another GLUE task, trained the lab's way on a subsample, or found ready.

03-Inference serves MRPC, SST-2 and CoLA from one base model. MRPC's pack is the one 02 writes;
the others come from :func:`make_pack`: it first looks for a ready pack of the task that fits this
very base (``lab.packs.load_bias_checkpoint`` decides: same base name, architecture, head and
labels, frozen-weight fingerprint), then for one it wrote before with the same settings, and only
then trains one; :func:`serve_tasks` puts them on one base. Every pack reads the encoder through
the same head (``lab.heads``) as 02's MRPC pack: :func:`serve_tasks` passes that pack's head on, and
the default is 02's own choice (``lab.recipe.head_for`` with the study's recipe). Training follows
02's rule on a subsample (``PackSettings``): BitFit (``apply_bitfit``), ``make_trainer(..., task=)``,
the epoch kept by validation MCC, dev reported.
Before it starts it prints what it will train and how long that should take on this machine
(a measured training step times the steps, plus the scoring).

For another base model: pass ``model_name`` (or set ``$BITFIT_MODEL``); ready packs of another
base are refused by their fingerprint, so the packs are trained anew for it.

:func:`synthetic_pack` makes an untrained pack with a real pack's shape and metadata, for tests
and benchmarks.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitfit_utils import parameter_groups
from lab import packs
from lab.tasks import SERVED_TASKS, get_task


@dataclass(frozen=True)
class PackSettings:
    """How much a task's pack trains on.

    Attributes:
        train_size: training examples. Both come from a stratified pool of the task's train split,
            just large enough that the lab's validation share of it (``selection_splits``) holds
            ``validation_size``; the rest is subsampled to ``train_size``.
        validation_size: validation examples (chooses the epoch).
        dev_size: GLUE dev examples scored after every epoch (None: all of them; only reported).
        epochs: epochs of training.
        learning_rate: BitFit's rate; the default is BitFit's default rate (``lab.recipe.DEFAULT_LR["bitfit"]``,
            the registry's ``default_lr``), which 02 trains with until the study has chosen one.
        batch_size: examples per step.
        seed: seed of the subsamples, the head's initialisation and the training order.
    """

    train_size: int
    validation_size: int
    dev_size: int | None
    epochs: int
    learning_rate: float = 1e-3
    batch_size: int = 32
    seed: int = 42


#: A student's CPU: a few minutes per task.
STUDENT = PackSettings(train_size=2000, validation_size=400, dev_size=None, epochs=2)
#: CI (``BITFIT_QUICK=1``): seconds per task; the pack is barely trained.
QUICK = PackSettings(train_size=64, validation_size=32, dev_size=32, epochs=1)
#: The study's packs (``study.run``'s task stage), used where they fit the base.
READY_PACKS = "results/v3/packs"


def pack_settings(quick: bool) -> PackSettings:
    """``QUICK`` when ``quick`` (CI), else ``STUDENT``."""
    return QUICK if quick else STUDENT


def pack_path(task: str, out_dir: str | os.PathLike = "packs") -> Path:
    """Where :func:`make_pack` writes ``task``'s pack: ``<out_dir>/<task>_bitfit.safetensors`` (02's naming)."""
    return Path(out_dir) / f"{get_task(task).name}_bitfit.safetensors"


def pack_refusal(model: torch.nn.Module, path: str | os.PathLike, task: str) -> str | None:
    """Why the pack at ``path`` cannot serve ``task`` on ``model``'s base, or None when it can.

    The checks are ``lab.packs.load_bias_checkpoint``'s (task, base name, architecture, head size and
    labels, tensors, sampled fingerprint), plus: the pack trained some biases (not a head-only pack).
    ``model`` is a throwaway: on success the pack is loaded into it.

    Args:
        model: the base model with the head of ``task`` (``load_model(..., task=task)``).
        path: a pack file.
        task: the task it must be for.
    """
    try:
        _, meta = packs.read_bias_checkpoint(path)
        if not [g for g in meta.get("bias_groups") or [] if g != "head"]:
            return f"'{path}' trained no bias (a head-only pack), not BitFit."
        packs.load_bias_checkpoint(model, path, task=get_task(task).name)
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    return None


def find_ready_pack(model: torch.nn.Module, task: str, folder: str | os.PathLike | None) -> Path | None:
    """The best pack in ``folder`` (``*.safetensors``) that serves ``task`` on ``model``'s base, or None.

    Several fitting packs (seeds of a study): the one with the highest recorded validation MCC
    (``dev_at_kept.validation_mcc`` in its metadata, as ``study.run`` records it), then by name.
    """
    if folder is None or not Path(folder).is_dir():
        return None
    fitting = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        if pack_refusal(model, path, task) is None:
            user = packs.read_bias_checkpoint(path)[1].get("user") or {}
            mcc = (user.get("dev_at_kept") or {}).get("validation_mcc", float("-inf"))
            fitting.append((-float(mcc), path.name, path))
    return min(fitting)[2] if fitting else None


def _subsample(dataset, size: int | None, seed: int, stratify: bool = True):
    """``size`` examples of ``dataset`` (each label's share kept where ``stratify``), or all of it.

    Drawn with numpy over the label column: ``datasets``' own stratified split takes tens of
    seconds on SST-2's 67,349 sentences.
    """
    if size is None or size >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    if not stratify:
        return dataset.select(np.sort(rng.permutation(len(dataset))[:size]))
    labels = np.asarray(dataset["label"])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    take[np.argsort(exact - take)[::-1][:size - take.sum()]] += 1  # largest remainders get the rest
    rows = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return dataset.select(np.sort(np.concatenate(rows)))


def study_head(model: nn.Module, head: str | None = None) -> str:
    """The head (``lab.heads.POOLINGS``) a pack for ``model``'s base is trained with: ``head`` when given, else
    the one 02 trains with, ``lab.recipe.head_for`` on the study's recipe (``results/v3/recipe.json``)."""
    from lab.recipe import head_for, read_recipe

    return head if head is not None else head_for(model, read_recipe())


def _load_with_head(model_name: str | None, task: str, head: str | None) -> tuple[nn.Module, Any, str]:
    """``load_model(model_name, task=task)`` with :func:`study_head`'s head set: ``(model, tokenizer, head)``."""
    from lab.heads import set_pooling
    from lab.models import load_model

    model, tokenizer = load_model(model_name, verbose=False, task=task)
    head = study_head(model, head)
    return set_pooling(model, head), tokenizer, head


def make_pack(task: str, out_dir: str | os.PathLike = "packs", *, model_name: str | None = None,
              settings: PackSettings = STUDENT, ready_dir: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None, head: str | None = None, verbose: bool = True) -> Path:
    """``task``'s BitFit pack for the base ``model_name``: a ready one if one fits, else trained now.

    Looks, in order, for: the best fitting pack in ``ready_dir`` (:func:`find_ready_pack`); the pack
    this function wrote before at :func:`pack_path` with the same ``settings`` and base; else trains
    one (printing what and how long first) and writes it there.

    Args:
        task: a task of ``lab.tasks.TASKS`` (``"sst2"``, ``"cola"``, ...).
        out_dir: where a trained pack is written (``<task>_bitfit.safetensors``).
        model_name: the base (None: ``$BITFIT_MODEL`` or the lab's default, as ``load_model``).
        settings: how much to train (``STUDENT``, ``QUICK`` or your own ``PackSettings``).
        ready_dir: a folder of ready packs (e.g. the study's ``results/v3/packs``), or None.
        data_dir: the task's own data folder (None: ``$BITFIT_DATA_ROOT`` or beside ``$BITFIT_DATA_DIR``).
        head: what the head reads (``"cls"`` or ``"mean"``, ``lab.heads``): the packs it must be served
            beside were trained with it (:func:`serve_tasks` passes 02's MRPC pack's head). A ready pack
            of another head is refused. None: :func:`study_head`, the head 02 chooses for this base.
        verbose: print where the pack comes from, the plan and the result.

    Returns:
        The pack's path.
    """
    spec = get_task(task)
    say = print if verbose else (lambda *a, **k: None)
    target = pack_path(spec.name, out_dir)
    if (ready_dir is not None and Path(ready_dir).is_dir()) or target.is_file():
        model, _, head = _load_with_head(model_name, spec.name, head)  # a throwaway: the checks load packs
        ready = find_ready_pack(model, spec.name, ready_dir)
        if ready is not None:
            say(f"{spec.title}: ready pack {ready} fits this base ({model.config._name_or_path}); no training.")
            return ready
        if target.is_file() and pack_refusal(model, target, spec.name) is None \
                and (packs.read_bias_checkpoint(target)[1].get("user") or {}).get("settings") == asdict(settings):
            say(f"{spec.title}: using {target}, trained before with the same settings.")
            return target
    return _train_pack(model_name, spec.name, target, settings, data_dir, say, head)


def serve_tasks(base_model: str, ready: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike = "packs",
                tasks: Sequence[str] = SERVED_TASKS, quick: bool = False,
                ready_dir: str | os.PathLike | None = READY_PACKS):
    """03's server: the base loaded once, with the packs in ``ready`` and one per task in ``tasks``.

    Args:
        base_model: the base every pack must fit (a pack's ``base_model`` metadata).
        ready: packs already made, ``{task: path}`` (03: 02's MRPC pack); the first one's head
            (``lab.heads``) is the base's, and every pack must have been trained with it.
        out_dir, ready_dir: as :func:`make_pack`.
        tasks: the other tasks; each pack comes from :func:`make_pack` (ready, made before, or trained now)
            with the head of the first pack in ``ready`` (else :func:`study_head`'s).
        quick: train the small CI subsample (``pack_settings``).

    Prints each task's labels and the server's memory against one full model per task.

    Returns:
        ``(server, {task: pack path})``: a ``lab.serving.MultiTaskBitFit`` in eval mode, and its packs.
    """
    from lab.heads import set_pooling
    from lab.models import load_model
    from lab.serving import MultiTaskBitFit

    paths = {task: Path(path) for task, path in ready.items()}
    head = packs.read_bias_checkpoint(next(iter(paths.values())))[1]["head"] if paths else None  # 02's head
    for task in tasks:
        paths[task] = make_pack(task, out_dir, model_name=base_model, settings=pack_settings(quick),
                                ready_dir=ready_dir, head=head)
    base, _ = load_model(base_model, verbose=False)
    set_pooling(base, packs.read_bias_checkpoint(next(iter(paths.values())))[1].get("head", "cls"))  # 02's head
    server = MultiTaskBitFit(base.eval(), paths)   # every pack checked against this very base, head included
    print({task: list(pack.id2label.values()) for task, pack in server.tasks.items()})
    print(server.memory_line())
    return server, paths


def _train_pack(model_name: str | None, task: str, target: Path, settings: PackSettings, data_dir, say,
                head: str | None = None) -> Path:
    """Train BitFit on ``task`` by 02's rule on ``settings``' subsample and save the pack at ``target``.

    The model reads through ``head`` (None: :func:`study_head`), set before BitFit, as in 02 and ``study.run``.
    """
    import bitfit_utils as bu
    from lab.data import VALIDATION_SHARE, load_task, selection_splits, tokenize_task
    from lab.models import get_device
    from lab.timing import estimate_trainings, measure_step_costs, plan_training
    from lab.training import kept_row, make_trainer, set_seed

    spec = get_task(task)
    data = load_task(spec, data_dir)
    train_total = len(data["train"])
    # validation is carved from a stratified pool just big enough for both sizes (fast on SST-2's 67k)
    pool = max(settings.train_size / (1 - VALIDATION_SHARE), settings.validation_size / VALIDATION_SHARE)
    data["train"] = _subsample(data["train"], math.ceil(pool), settings.seed)
    splits = selection_splits(data)
    splits["train"] = _subsample(splits["train"], settings.train_size, settings.seed)
    splits["validation"] = _subsample(splits["validation"], settings.validation_size, settings.seed)
    splits["dev"] = _subsample(splits["dev"], settings.dev_size, settings.seed, stratify=False)
    set_seed(settings.seed)  # the new head is drawn at load time, as in 02
    model, tokenizer, head = _load_with_head(model_name, spec.name, head)
    encoded = tokenize_task(splits, tokenizer, spec)
    bu.apply_bitfit(model)
    device = get_device()
    model.to(device)
    costs = measure_step_costs(model, tokenizer, splits["train"], ("bitfit",), batch_size=settings.batch_size,
                               max_length=spec.max_length, steps=1, task=spec.name)
    step = costs.step_seconds["bitfit"]
    plan = plan_training(spec.title, "bitfit", len(encoded["train"]), settings.batch_size, settings.epochs,
                         len(encoded["validation"]) + len(encoded["dev"]))
    estimate = estimate_trainings(costs, [plan])[spec.title]
    kind = "pairs" if spec.is_pair else "sentences"
    say(f"{spec.title}: training BitFit on {len(encoded['train']):,} of {train_total:,} train {kind}, "
        f"{settings.epochs} epoch(s), lr {settings.learning_rate:g}, {head} head; "
        f"validation {len(encoded['validation'])} + "
        f"dev {len(encoded['dev'])} scored after each epoch. Estimated {_duration(estimate)} on {device.type} "
        f"({step:.2f} s a step, measured now).")
    set_seed(settings.seed)  # the probe drew dropout masks: start training from the seed
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(model, tokenizer, encoded["train"], {"validation": encoded["validation"],
                               "dev": encoded["dev"]}, scratch, learning_rate=settings.learning_rate,
                               epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed,
                               task=spec.name)
        trainer.train()
    seconds = time.perf_counter() - start
    row = kept_row(trainer)
    scores = {f"dev_{m}": float(row[f"eval_dev_{m}"]) for m in spec.metrics}
    model.cpu()
    packs.save_bias_checkpoint(model, target, task=spec.name, method="bitfit", settings=asdict(settings),
                               kept_epoch=float(row.name), train_seconds=seconds,
                               validation_mcc=float(row["eval_validation_mcc"]), **scores)
    shown = ", ".join(f"{m} {100 * v:.1f}" if m != "dev_mcc" else f"{m} {v:.3f}" for m, v in scores.items())
    say(f"{spec.title}: trained in {_duration(seconds)} (estimated {_duration(estimate)}); kept epoch "
        f"{float(row.name):g}: {shown}; pack written to {target}.")
    return target


def _duration(seconds: float) -> str:
    """``"45 s"`` under two minutes, else ``"3.2 min"``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def synthetic_pack(model: nn.Module, task: str, num_labels: int = 2, scale: float = 0.05, seed: int = 0,
                   fingerprint: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A made-up pack for ``model``: its biases randomly perturbed and a random head (tests, benchmarks).

    Nothing is trained: the pack only has the shape, metadata and fingerprint of a real one.

    Args:
        model: the base model the pack is for (left unchanged).
        task: recorded as the pack's task.
        num_labels: rows of the random head; labels are named ``LABEL_i``.
        scale: standard deviation of the bias noise and of the head's entries.
        seed: seed of the noise.
        fingerprint: the base's full fingerprint if already computed (it hashes every frozen weight).
    """
    generator = torch.Generator().manual_seed(seed)
    groups = parameter_groups(model)
    params = dict(model.named_parameters())
    noise = lambda shape: scale * torch.randn(shape, generator=generator)  # noqa: E731
    tensors = {n: (p.detach().cpu() + noise(p.shape).to(p.dtype)).contiguous()
               for n, p in params.items() if groups[n] not in ("head", "frozen")}
    hidden = model.classifier.in_features
    tensors["classifier.weight"] = noise((num_labels, hidden)).to(model.classifier.weight.dtype)
    tensors["classifier.bias"] = noise((num_labels,)).to(model.classifier.bias.dtype)
    exclude = [n for n, g in groups.items() if g != "frozen"]
    meta = {"format": packs.PACK_FORMAT, "base_model": str(getattr(model.config, "_name_or_path", "") or ""),
            "architecture": type(model).__name__,
            "task": task, "label_names": [f"LABEL_{i}" for i in range(num_labels)],
            "fingerprint": packs.base_fingerprint(model, exclude),
            "fingerprint_full": fingerprint or packs.base_fingerprint(model, exclude, full=True),
            "id2label": {str(i): f"LABEL_{i}" for i in range(num_labels)},
            "user": {"synthetic": True}}
    return tensors, meta
