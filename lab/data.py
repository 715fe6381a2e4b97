"""GLUE tasks (MRPC, SST-2, CoLA, RTE; ``lab.tasks``): read from a local GLUE folder or the Hub, split, tokenized.

Where the offline files are, per task (the first that applies):

1. the ``data_dir`` argument: the task's own folder (``.../sst2``);
2. for MRPC, ``$BITFIT_DATA_DIR`` (MRPC's folder, as before tasks were added);
3. ``$BITFIT_DATA_ROOT/<folder>``: the folder that holds ``mrpc/``, ``sst2/``, ``cola/``, ``rte/``;
4. for the other tasks, the sibling of ``$BITFIT_DATA_DIR`` when that folder is named ``mrpc``
   and the sibling exists (``.../data/mrpc`` -> ``.../data/sst2``);
5. else the Hugging Face Hub (``nyu-mll/glue``, the task's config) or its local cache.

A folder named by 1-3 must exist (a clear error otherwise); the guess of 4 is used only if it does.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from lab.hub import hub_available, quiet_hf
from lab.tasks import DEFAULT_MAX_LENGTH, DEFAULT_SEED, GlueFile, TaskSpec, get_task

LABEL_NAMES = get_task("mrpc").label_names
#: Environment variables naming the offline folders (see the module docstring).
DATA_DIR_ENV, DATA_ROOT_ENV = "BITFIT_DATA_DIR", "BITFIT_DATA_ROOT"


def _where_to_fix(spec: TaskSpec) -> str:
    """Which setting points at ``spec``'s folder, for error messages."""
    if spec.name == "mrpc":
        return f"{DATA_DIR_ENV} (or data_dir)"
    return f"{DATA_ROOT_ENV} (the folder holding {spec.folder}/) or data_dir"


def task_folder(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The offline folder of ``task`` by the rules of the module docstring, or None (use the Hub).

    Raises:
        FileNotFoundError: a folder named by ``data_dir``, ``$BITFIT_DATA_DIR`` (MRPC) or
            ``$BITFIT_DATA_ROOT`` does not exist.
    """
    spec = get_task(task)
    data_dir_env, root = os.environ.get(DATA_DIR_ENV), os.environ.get(DATA_ROOT_ENV)
    named = None
    if data_dir:
        named = Path(data_dir)
    elif spec.name == "mrpc" and data_dir_env:
        named = Path(data_dir_env)
    elif root:
        named = Path(root) / spec.folder
    if named is not None:
        named = named.expanduser()
        if not named.is_dir():
            raise FileNotFoundError(
                f"{spec.title} folder '{named}' does not exist. Point {_where_to_fix(spec)} at the folder "
                f"holding {', '.join(f.name for f in spec.files)}, or unset it to use the Hugging Face Hub."
            )
        return named
    if data_dir_env and Path(data_dir_env).expanduser().name == "mrpc":
        sibling = Path(data_dir_env).expanduser().parent / spec.folder
        if sibling.is_dir():
            return sibling
    return None


def _decode(path: Path, spec: TaskSpec) -> str:
    """The file's text without a UTF-8 byte-order mark; a non-UTF-8 byte names its line."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text. Save the file as UTF-8 "
            f"(GLUE's {spec.title} files are), e.g. `iconv -f latin1 -t utf-8`, or download {spec.title} again."
        ) from None


def read_glue_tsv(path: Path, spec: TaskSpec, layout: GlueFile) -> dict[str, list]:
    """Read one GLUE TSV file of ``spec`` laid out as ``layout``; errors name the file and line.

    Returns:
        Columns ``spec.text_columns``, ``label`` (ids; -1 for an unlabelled file) and ``idx`` (row number from 0).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec.title} file missing: '{path}'. The folder must hold "
            f"{', '.join(f.name for f in spec.files)} in the GLUE layout (see README); "
            f"fix {_where_to_fix(spec)} or unset it to use the Hub."
        )
    cols: dict[str, list] = {**{c: [] for c in spec.text_columns}, "label": [], "idx": []}
    label_ids = {value: i for i, value in enumerate(spec.label_values)}
    allowed = " or ".join(spec.label_values)
    with io.StringIO(_decode(path, spec), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first_row = 1
        if layout.header is not None:
            header = next(reader, None)
            if header != list(layout.header):
                raise ValueError(f"{path}, line 1: header {header} is not the GLUE {spec.title} header "
                                 f"{list(layout.header)}. Use the files of GLUE's download script.")
            first_row = 2
        for line_no, row in enumerate(reader, start=first_row):
            if len(row) != layout.n_fields:
                raise ValueError(f"{path}, line {line_no}: expected {layout.n_fields} tab-separated fields, "
                                 f"got {len(row)}. Fix or remove that line, or download {spec.title} again.")
            label = -1
            if layout.label_field is not None:
                raw = row[layout.label_field]
                if raw not in label_ids:
                    raise ValueError(f"{path}, line {line_no}: label {raw!r} is not {allowed}. "
                                     f"Fix or remove that line, or download {spec.title} again.")
                label = label_ids[raw]
            for column, field in zip(spec.text_columns, layout.text_fields):
                cols[column].append(row[field])
            cols["label"].append(label)
            cols["idx"].append(line_no - first_row)
    if not cols["idx"]:
        raise ValueError(f"{path} has no rows. Download {spec.title} again.")
    return cols


def task_features(task: str | TaskSpec):
    """The ``datasets.Features`` of ``task`` as the Hub has them: text columns, ``label`` (ClassLabel), ``idx``."""
    import datasets

    spec = get_task(task)
    return datasets.Features({
        **{c: datasets.Value("string") for c in spec.text_columns},
        "label": datasets.ClassLabel(names=list(spec.label_names)),
        "idx": datasets.Value("int32"),
    })


def load_task(task: str | TaskSpec, data_dir: str | os.PathLike | None = None):
    """Load a GLUE task as a ``DatasetDict`` with the schema of ``nyu-mll/glue``/``<config>``.

    Looks in the task's offline folder (see the module docstring: ``data_dir``, ``$BITFIT_DATA_DIR``
    for MRPC, ``$BITFIT_DATA_ROOT``), else the Hugging Face Hub (or its local cache when offline).

    Args:
        task: a name in ``lab.tasks.TASKS`` (``"mrpc"``, ``"sst2"``, ``"cola"``, ``"rte"``) or a ``TaskSpec``.
        data_dir: the task's own folder in the GLUE layout.

    Returns:
        Splits ``train``, ``validation`` (GLUE dev) and, where the folder has one, ``test``; columns
        ``spec.text_columns``, ``label`` (ClassLabel with ``spec.label_names``; -1 on test), ``idx``.
        From the Hub: the Hub's splits (with ``test``).
    """
    import datasets

    spec = get_task(task)
    folder = task_folder(spec, data_dir)
    if folder is not None:
        features = task_features(spec)
        return datasets.DatasetDict({
            f.split: datasets.Dataset.from_dict(read_glue_tsv(folder / f.name, spec, f), features=features)
            for f in spec.files
        })
    online = hub_available()
    try:
        with quiet_hf():
            return datasets.load_dataset(spec.hub_id, spec.hub_config)
    except Exception as err:
        why = (f"the Hub did not answer and {spec.title} is not in the local cache" if not online
               else f"loading failed ({err})")
        files = f"the GLUE {spec.title} files ({', '.join(f.name for f in spec.files)})"
        if spec.name == "mrpc":
            fix = f"set {DATA_DIR_ENV} to a folder with {files}"
            then = "run `python -m lab.hub` once while online (it prefetches MRPC and bert-base-uncased)."
        else:
            fix = f"set {DATA_ROOT_ENV} to a folder holding {spec.folder}/ with {files}"
            then = "load it once while online (the Hub's copy is then cached)."
        raise RuntimeError(f"Cannot load {spec.title}: {why}. Either {fix}, or {then}"
        ) from None


def load_mrpc(data_dir: str | os.PathLike | None = None):
    """Load GLUE MRPC as a ``DatasetDict`` with the schema of ``nyu-mll/glue``/``mrpc`` (``load_task("mrpc")``).

    Looks in ``data_dir``, else ``$BITFIT_DATA_DIR`` (a folder in the GLUE layout),
    else ``$BITFIT_DATA_ROOT/mrpc``, else the Hugging Face Hub (or its local cache when offline).

    Returns:
        Splits ``train``, ``validation``, ``test`` with columns ``sentence1``,
        ``sentence2``, ``label`` (ClassLabel not_equivalent/equivalent; -1 on test), ``idx``.
    """
    return load_task("mrpc", data_dir)


def task_dev(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> tuple[list, list[int]]:
    """A task's GLUE dev set (the Hub's validation split) as ``(examples, labels)``, the shape ``predict`` takes.

    Returns:
        ``examples``: ``[(sentence1, sentence2), ...]`` for a pair task, ``[sentence, ...]`` for a
        single-sentence task; ``labels``: label ids.
    """
    spec = get_task(task)
    dev = load_task(spec, data_dir)["validation"]
    columns = [dev[c] for c in spec.text_columns]
    examples = list(zip(*columns)) if spec.is_pair else list(columns[0])
    return examples, list(dev["label"])


def mrpc_dev(data_dir: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], list[int]]:
    """MRPC dev (GLUE's validation split) as ``(pairs, labels)``: ``[(sentence1, sentence2), ...]`` and 0/1."""
    return task_dev("mrpc", data_dir)


def tokenize_task(dataset, tokenizer, task: str | TaskSpec, max_length: int | None = None):
    """Tokenize ``task``'s examples (one sentence or a pair) with ``datasets.map`` (batched; no padding here).

    Padding happens per batch in ``DataCollatorWithPadding``, so a batch is only as long as its
    longest example. The text columns and ``idx`` are dropped; ``label`` stays. No progress bar.

    Args:
        dataset: a ``Dataset`` or ``DatasetDict`` with ``task``'s text columns.
        tokenizer: the model's tokenizer.
        task: a name in ``lab.tasks.TASKS`` or a ``TaskSpec``.
        max_length: longer examples are truncated; None: the task's ``max_length``.
    """
    import datasets

    spec = get_task(task)
    length = max_length or spec.max_length
    present = dataset.column_names
    present = set(next(iter(present.values()), [])) if isinstance(present, dict) else set(present)
    missing = [c for c in spec.text_columns if c not in present]
    if missing:
        raise ValueError(f"The dataset has no column {missing[0]!r}: {spec.title} needs {list(spec.text_columns)} "
                         f"(it has {sorted(present)}). Load it with load_task({spec.name!r}).")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(*(batch[c] for c in spec.text_columns), truncation=True, max_length=length)

    columns = [c for c in (*spec.text_columns, "idx") if c in present]
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # these sets take seconds at most: a bar would only stay behind in the outputs
    try:
        return dataset.map(encode, batched=True, remove_columns=columns)
    finally:
        if shown:
            datasets.enable_progress_bars()


def tokenize_pairs(dataset, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
    """Tokenize MRPC sentence pairs (``tokenize_task(dataset, tokenizer, "mrpc", max_length)``).

    Padding happens per batch in ``DataCollatorWithPadding``, so a batch is only as
    long as its longest pair. Text columns are dropped; ``label`` stays. No progress bar.
    """
    return tokenize_task(dataset, tokenizer, "mrpc", max_length)


#: The validation split: this share of the task's train split, stratified by label, always drawn with this seed.
VALIDATION_SHARE, VALIDATION_SEED = 0.1, 0


def selection_splits(data, share: float = VALIDATION_SHARE, seed: int = VALIDATION_SEED):
    """A task's data for training by the lab's rule: ``train``, ``validation`` (carved from train), ``dev``.

    The model learns on ``train``; the epoch and the learning rate are chosen on ``validation``
    (a stratified ``share`` of the task's train split, the same examples for every run); GLUE's dev
    set (the Hub's ``validation`` split) is only reported, so that what is reported is never what
    was selected on. Works for every task: it only needs a ClassLabel ``label`` column.

    Args:
        data: ``load_task()``'s (or ``load_mrpc()``'s) DatasetDict (raw or tokenized).
        share: the share of train that becomes validation.
        seed: the seed of the draw.
    """
    import datasets

    parts = data["train"].train_test_split(test_size=share, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"], "dev": data["validation"]})


def training_sets(splits, tokenizer, max_length: int | None = None, subset: int | None = None,
                  seed: int = DEFAULT_SEED, task: str | TaskSpec = "mrpc", eval_subset: int | None = None):
    """The tokenized sets a training needs: ``train`` (or ``subset`` shuffled examples of it) and the eval sets.

    Args:
        splits: ``selection_splits()``'s DatasetDict.
        tokenizer: the model's tokenizer.
        max_length: longer examples are truncated; None: the task's ``max_length`` (MRPC: 128).
        subset: train on this many shuffled examples of train; None: all of them.
        seed: the seed of that shuffle.
        task: the task the splits belong to.
        eval_subset: score on the first this many examples of validation and of dev (a smoke test);
            None: all of them.

    Returns:
        ``(train_set, eval_sets)``; ``eval_sets`` is ``{"validation": ..., "dev": ...}``, both
        scored after every epoch (validation to choose, dev to report).
    """
    encoded = tokenize_task(splits, tokenizer, task, max_length=max_length)
    train_set = encoded["train"].shuffle(seed=seed).select(range(subset)) if subset else encoded["train"]
    evals = {k: encoded[k] for k in ("validation", "dev")}
    if eval_subset:
        evals = {k: ds.select(range(min(eval_subset, len(ds)))) for k, ds in evals.items()}
    return train_set, evals


def describe_splits(data, splits, label_names: Sequence[str] | None = None, task: str | TaskSpec = "mrpc") -> float:
    """Print the sizes of the GLUE task and of the lab's three splits, each split's labels, and what a model
    that always answers train's majority label ("equivalent" on MRPC) scores on dev.

    Returns:
        The dev majority share (for plots and tables).
    """
    from collections import Counter

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    names = tuple(label_names or spec.label_names)
    print(f"GLUE {spec.title}:", {"dev" if split == "validation" else split: len(ds) for split, ds in data.items()},
          "(the Hub names dev 'validation')")
    print("this lab: ", {split: len(ds) for split, ds in splits.items()})
    print(f"validation = {VALIDATION_SHARE:.0%} of {spec.title} train, stratified by label, seed {VALIDATION_SEED}; "
          "dev = GLUE's dev set, only reported")
    majority = {}
    for split in ("train", "validation", "dev"):
        counts = Counter(names[y] for y in splits[split]["label"])
        majority[split] = max(counts.values()) / sum(counts.values())
        print(split, dict(counts.most_common()), f"-> majority share {majority[split]:.3f}")
    top = Counter(splits["train"]["label"]).most_common(1)[0][0]
    dev_labels = list(splits["dev"]["label"])
    always = [top] * len(dev_labels)
    scores = [f"accuracy {100 * accuracy_score(dev_labels, always):.1f}"]
    if "f1" in spec.metrics:
        scores.append(f"F1 {100 * f1_score(dev_labels, always, pos_label=1, zero_division=0):.1f}")
    scores.append(f"MCC {matthews_corrcoef(dev_labels, always):.1f}")
    print(f"always '{names[top]}' on dev: " + ", ".join(scores))
    return majority["dev"]
