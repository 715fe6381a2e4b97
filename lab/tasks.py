"""The GLUE tasks the lab can train on: one ``TaskSpec`` entry per task.

Everything task-specific lives here: where the task is on the Hub, its offline folder and the
layout of its TSV files, its text columns (a sentence pair or one sentence), its label names,
the metrics GLUE reports for it and the tokenizer's maximum length. ``lab.data``,
``lab.models`` and ``lab.training`` read these entries; adding a task is one entry in
``TASKS`` (plus its tests).

Imports the standard library only (``import lab`` stays cheap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: The metrics a ``TaskSpec`` may name (computed by ``lab.training.metrics_for``).
KNOWN_METRICS = ("accuracy", "f1", "mcc")


@dataclass(frozen=True)
class GlueFile:
    """One TSV file of a task's offline folder, in the layout GLUE's download script writes.

    Attributes:
        split: the ``DatasetDict`` split it becomes: ``"train"``, ``"validation"`` (GLUE dev) or ``"test"``.
        name: file name inside the task's folder, e.g. ``"dev.tsv"``.
        header: the exact header row, or None for a file without one (CoLA).
        n_fields: tab-separated fields on every row.
        text_fields: positions of the text columns, in the order of ``TaskSpec.text_columns``.
        label_field: position of the label, or None for an unlabelled file (label -1).
    """

    split: str
    name: str
    header: tuple[str, ...] | None
    n_fields: int
    text_fields: tuple[int, ...]
    label_field: int | None


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE classification task.

    Attributes:
        name: registry key and Hub config, e.g. ``"sst2"``.
        title: how people write it, e.g. ``"SST-2"`` (used in messages).
        hub_id: the Hub dataset, ``"nyu-mll/glue"``.
        hub_config: the Hub dataset's config, e.g. ``"sst2"``.
        folder: name of the offline folder under a data root, e.g. ``"sst2"``.
        text_columns: ``("sentence1", "sentence2")`` for a pair task, ``("sentence",)`` for one sentence
            (the Hub's column names).
        label_names: class names in label-id order (the Hub's ClassLabel names).
        label_values: how each label is written in the TSV files, in the same order.
        metrics: GLUE's headline metrics for the task, among ``KNOWN_METRICS``.
        max_length: tokens per example; longer ones are truncated.
        files: the TSV files of the offline folder (all required).
    """

    name: str
    title: str
    hub_config: str
    folder: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    label_values: tuple[str, ...]
    metrics: tuple[str, ...]
    max_length: int
    files: tuple[GlueFile, ...]
    hub_id: str = "nyu-mll/glue"

    def __post_init__(self) -> None:
        if len(self.text_columns) not in (1, 2):
            raise ValueError(f"Task {self.name!r}: text_columns must be one sentence or a pair, got {self.text_columns}.")
        if len(self.label_values) != len(self.label_names):
            raise ValueError(f"Task {self.name!r}: {len(self.label_names)} label names but "
                             f"{len(self.label_values)} label values.")
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"Task {self.name!r}: metrics {self.metrics} must name some of {KNOWN_METRICS}.")
        for f in self.files:
            if len(f.text_fields) != len(self.text_columns):
                raise ValueError(f"Task {self.name!r}, {f.name}: {len(f.text_fields)} text fields for "
                                 f"columns {self.text_columns}.")
            if f.header is not None and len(f.header) != f.n_fields:
                raise ValueError(f"Task {self.name!r}, {f.name}: header has {len(f.header)} names, n_fields is {f.n_fields}.")

    @property
    def is_pair(self) -> bool:
        """Whether an example is a sentence pair (else one sentence)."""
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)


def _labelled(name: str, split: str, header: tuple[str, ...] | None, text: tuple[int, ...], label: int,
              n_fields: int | None = None) -> GlueFile:
    """A labelled file; ``n_fields`` defaults to the header's length."""
    return GlueFile(split, name, header, n_fields or len(header or ()), text, label)


_MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")

TASKS: dict[str, TaskSpec] = {
    # Paraphrase: 3,668 / 408 pairs. GLUE reports accuracy and F1 (positive class: equivalent).
    "mrpc": TaskSpec(
        name="mrpc", title="MRPC", hub_config="mrpc", folder="mrpc",
        text_columns=("sentence1", "sentence2"),
        label_names=("not_equivalent", "equivalent"), label_values=("0", "1"),
        metrics=("accuracy", "f1"), max_length=128,  # longest train pair: 103 MiniLM tokens
        files=(
            _labelled("train.tsv", "train", _MRPC_HEADER, (3, 4), 0),
            _labelled("dev.tsv", "validation", _MRPC_HEADER, (3, 4), 0),
            GlueFile("test", "test.tsv", ("index",) + _MRPC_HEADER[1:], 5, (3, 4), None),
        ),
    ),
    # Sentiment: 67,349 / 872 single sentences, header `sentence  label`. GLUE reports accuracy.
    "sst2": TaskSpec(
        name="sst2", title="SST-2", hub_config="sst2", folder="sst2",
        text_columns=("sentence",),
        label_names=("negative", "positive"), label_values=("0", "1"),
        metrics=("accuracy",), max_length=64,  # longest dev sentence: 55 MiniLM tokens
        files=(
            _labelled("train.tsv", "train", ("sentence", "label"), (0,), 1),
            _labelled("dev.tsv", "validation", ("sentence", "label"), (0,), 1),
        ),
    ),
    # Acceptability: 8,551 / 1,043 single sentences, no header, `source  label  original-mark  sentence`.
    # GLUE reports Matthews correlation.
    "cola": TaskSpec(
        name="cola", title="CoLA", hub_config="cola", folder="cola",
        text_columns=("sentence",),
        label_names=("unacceptable", "acceptable"), label_values=("0", "1"),
        metrics=("mcc",), max_length=64,  # longest train sentence: 47 MiniLM tokens
        files=(
            _labelled("train.tsv", "train", None, (3,), 1, n_fields=4),
            _labelled("dev.tsv", "validation", None, (3,), 1, n_fields=4),
        ),
    ),
    # Entailment: 2,490 / 277 pairs, header `index  sentence1  sentence2  label`. GLUE reports accuracy.
    "rte": TaskSpec(
        name="rte", title="RTE", hub_config="rte", folder="rte",
        text_columns=("sentence1", "sentence2"),
        label_names=("entailment", "not_entailment"), label_values=("entailment", "not_entailment"),
        metrics=("accuracy",), max_length=256,  # 12% of train pairs exceed 128 MiniLM tokens, 0.1% exceed 256
        files=(
            _labelled("train.tsv", "train", ("index", "sentence1", "sentence2", "label"), (1, 2), 3),
            _labelled("dev.tsv", "validation", ("index", "sentence1", "sentence2", "label"), (1, 2), 3),
        ),
    ),
}

#: The tasks 03-Inference serves beside MRPC (``lab.task_packs.serve_tasks``); ``python -m lab.hub`` caches them.
SERVED_TASKS: tuple[str, ...] = ("sst2", "cola")

#: The defaults of every function that tokenizes, batches or seeds without being told:
#: MRPC's length (the lab's task), the batch size and the seed of the lab's runs.
DEFAULT_MAX_LENGTH = TASKS["mrpc"].max_length
DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 42


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The ``TaskSpec`` named ``task`` (case-insensitive; a ``TaskSpec`` is returned as is).

    Raises:
        ValueError: for an unknown name, listing the known tasks.
    """
    if isinstance(task, TaskSpec):
        return task
    key = str(task).strip().lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Known tasks: {', '.join(TASKS)}. "
                       "To add one, add its TaskSpec to lab.tasks.TASKS.")
    return TASKS[key]


def in_task_order(names: Iterable[str]) -> list[str]:
    """``names`` once each, in ``TASKS``' order (MRPC, SST-2, CoLA, ...); names it lacks last, alphabetically."""
    order = list(TASKS)
    return sorted(set(names), key=lambda t: (order.index(t) if t in order else len(order), t))
