"""GLUE MRPC: read from a local GLUE folder or the Hub, split, tokenized."""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from lab.hub import hub_available, quiet_hf

LABEL_NAMES = ("not_equivalent", "equivalent")
_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def _read_glue_tsv(path: Path, labelled: bool) -> dict[str, list]:
    """Read one GLUE MRPC file; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MRPC file missing: '{path}'. The folder must hold train.tsv, dev.tsv and test.tsv "
            "in the GLUE layout (see README); fix BITFIT_DATA_DIR or unset it to use the Hub."
        )
    first = "Quality" if labelled else "index"
    expected = [first, "#1 ID", "#2 ID", "#1 String", "#2 String"]
    cols: dict[str, list] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text. Save the file as UTF-8 "
            "(GLUE's MRPC files are), e.g. `iconv -f latin1 -t utf-8`, or download MRPC again."
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != expected:
            raise ValueError(f"{path}, line 1: header {header} is not the GLUE MRPC header {expected}.")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 5:
                raise ValueError(f"{path}, line {line_no}: expected 5 tab-separated fields, got {len(row)}.")
            label = -1
            if labelled:
                if row[0] not in ("0", "1"):
                    raise ValueError(f"{path}, line {line_no}: label {row[0]!r} is not 0 or 1.")
                label = int(row[0])
            cols["sentence1"].append(row[3])
            cols["sentence2"].append(row[4])
            cols["label"].append(label)
            cols["idx"].append(line_no - 2)
    if not cols["idx"]:
        raise ValueError(f"{path} has a header but no rows.")
    return cols


def load_mrpc(data_dir: str | os.PathLike | None = None):
    """Load GLUE MRPC as a ``DatasetDict`` with the schema of ``nyu-mll/glue``/``mrpc``.

    Looks in ``data_dir``, else ``$BITFIT_DATA_DIR`` (a folder in the GLUE layout),
    else the Hugging Face Hub (or its local cache when offline).

    Returns:
        Splits ``train``, ``validation``, ``test`` with columns ``sentence1``,
        ``sentence2``, ``label`` (ClassLabel not_equivalent/equivalent; -1 on test), ``idx``.
    """
    import datasets

    folder = data_dir or os.environ.get("BITFIT_DATA_DIR")
    features = datasets.Features({
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
        "idx": datasets.Value("int32"),
    })
    if folder:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"MRPC folder '{folder}' does not exist. Point BITFIT_DATA_DIR (or data_dir) at the folder "
                "holding train.tsv/dev.tsv/test.tsv, or unset it to use the Hugging Face Hub."
            )
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict(_read_glue_tsv(folder / fname, split != "test"), features=features)
            for split, fname in _SPLIT_FILES.items()
        })
    online = hub_available()
    try:
        with quiet_hf():
            return datasets.load_dataset("nyu-mll/glue", "mrpc")
    except Exception as err:
        why = "the Hub did not answer and MRPC is not in the local cache" if not online else f"loading failed ({err})"
        raise RuntimeError(
            f"Cannot load MRPC: {why}. Either set BITFIT_DATA_DIR to a folder with the GLUE MRPC "
            "files (train.tsv, dev.tsv, test.tsv), or run `python -m lab.hub` once while online (it prefetches MRPC and bert-base-uncased)."
        ) from None


def mrpc_dev(data_dir: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], list[int]]:
    """MRPC dev (GLUE's validation split) as ``(pairs, labels)``: ``[(sentence1, sentence2), ...]`` and 0/1."""
    dev = load_mrpc(data_dir)["validation"]
    return list(zip(dev["sentence1"], dev["sentence2"])), list(dev["label"])


def tokenize_pairs(dataset, tokenizer, max_length: int = 128):
    """Tokenize sentence pairs with ``datasets.map`` (batched; no padding here).

    Padding happens per batch in ``DataCollatorWithPadding``, so a batch is only as
    long as its longest pair. Text columns are dropped; ``label`` stays. No progress bar.
    """
    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["sentence1"], batch["sentence2"], truncation=True, max_length=max_length)

    import datasets

    columns = ["sentence1", "sentence2", "idx"]
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # MRPC takes under a second: a bar would only stay behind in the outputs
    try:
        return dataset.map(encode, batched=True, remove_columns=columns)
    finally:
        if shown:
            datasets.enable_progress_bars()


#: The validation split: this share of MRPC train, stratified by label, always drawn with this seed.
VALIDATION_SHARE, VALIDATION_SEED = 0.1, 0


def selection_splits(data, share: float = VALIDATION_SHARE, seed: int = VALIDATION_SEED):
    """MRPC for training by the lab's rule: ``train``, ``validation`` (carved from train), ``dev``.

    The model learns on ``train``; the epoch and the learning rate are chosen on ``validation``
    (a stratified ``share`` of MRPC train, the same pairs for every run); GLUE's dev set (the
    Hub's ``validation`` split) is only reported, so that what is reported is never what was
    selected on.

    Args:
        data: ``load_mrpc()``'s DatasetDict (raw or tokenized).
    """
    import datasets

    parts = data["train"].train_test_split(test_size=share, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"], "dev": data["validation"]})


def training_sets(splits, tokenizer, max_length: int = 128, subset: int | None = None, seed: int = 42):
    """The tokenized sets a training needs: ``train`` (or ``subset`` shuffled pairs of it) and the eval sets.

    Returns ``(train_set, eval_sets)``; ``eval_sets`` is ``{"validation": ..., "dev": ...}``, both
    scored after every epoch (validation to choose, dev to report).
    """
    encoded = tokenize_pairs(splits, tokenizer, max_length=max_length)
    train_set = encoded["train"].shuffle(seed=seed).select(range(subset)) if subset else encoded["train"]
    return train_set, {"validation": encoded["validation"], "dev": encoded["dev"]}


def describe_splits(data, splits, label_names: Sequence[str] = LABEL_NAMES) -> float:
    """Print the sizes of GLUE MRPC and of the lab's three splits, each split's labels, and what a model
    that always answers "equivalent" scores on dev. Returns the dev majority share (for plots and tables)."""
    from collections import Counter

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    print("GLUE MRPC:", {split: len(ds) for split, ds in data.items()})
    print("this lab: ", {split: len(ds) for split, ds in splits.items()})
    print(f"validation = {VALIDATION_SHARE:.0%} of MRPC train, stratified by label, seed {VALIDATION_SEED}; "
          "dev = GLUE's validation split")
    majority = {}
    for split in ("train", "validation", "dev"):
        counts = Counter(label_names[y] for y in splits[split]["label"])
        majority[split] = max(counts.values()) / sum(counts.values())
        print(split, dict(counts.most_common()), f"-> majority share {majority[split]:.3f}")
    dev_labels = list(splits["dev"]["label"])
    always = [1] * len(dev_labels)
    print(f"always 'equivalent' on dev: accuracy {100 * accuracy_score(dev_labels, always):.1f}, "
          f"F1 {100 * f1_score(dev_labels, always):.1f}, MCC {matthews_corrcoef(dev_labels, always):.1f}")
    return majority["dev"]
