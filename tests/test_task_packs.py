"""lab.task_packs: a task's BitFit pack, found ready (if it fits the base) or trained on a subsample."""

import inspect

import pytest
import torch

import bitfit_utils as bu
from lab import packs, task_packs
from lab.methods import setup_method
from lab.task_packs import PackSettings, find_ready_pack, pack_refusal
from conftest import tiny_bert

MRPC_LABELS = {0: "not_equivalent", 1: "equivalent"}
SST2_LABELS = {0: "negative", 1: "positive"}
COLA_LABELS = {0: "unacceptable", 1: "acceptable"}


def task_model(labels=SST2_LABELS, seed=0):
    model = tiny_bert(seed)
    model.config.id2label, model.config.label2id = dict(labels), {v: k for k, v in labels.items()}
    return model


def save(model, path, task, method="bitfit", shift=0.1, **meta):
    setup_method(model, method)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(shift)
    return packs.save_bias_checkpoint(model, path, task=task, **meta)


def test_a_fitting_bitfit_pack_is_accepted_and_loaded(tmp_path):
    path = save(task_model(), tmp_path / "p.safetensors", "sst2")
    model = task_model()
    assert pack_refusal(model, path, "sst2") is None
    assert torch.equal(model.classifier.bias, packs.read_bias_checkpoint(path)[0]["classifier.bias"])


def test_refusals_another_task_other_labels_another_base_head_only(tmp_path):
    sst2 = save(task_model(), tmp_path / "sst2.safetensors", "sst2")
    assert "for task 'sst2', not 'cola'" in pack_refusal(task_model(COLA_LABELS), sst2, "cola")
    assert "labels" in pack_refusal(task_model(COLA_LABELS), sst2, "sst2")  # an SST-2 pack on a CoLA head
    assert "fingerprint mismatch" in pack_refusal(task_model(seed=1), sst2, "sst2")
    frozen = save(task_model(), tmp_path / "frozen.safetensors", "sst2", method="frozen")
    assert "head-only" in pack_refusal(task_model(), frozen, "sst2")
    assert "No bias pack" in pack_refusal(task_model(), tmp_path / "missing.safetensors", "sst2")


def test_find_ready_pack_picks_the_best_fitting_one(tmp_path):
    assert find_ready_pack(task_model(), "sst2", tmp_path / "nowhere") is None
    save(task_model(), tmp_path / "a-s1.safetensors", "sst2", dev_at_kept={"validation_mcc": 0.2})
    save(task_model(), tmp_path / "b-s2.safetensors", "sst2", dev_at_kept={"validation_mcc": 0.5})
    save(task_model(seed=3), tmp_path / "c-other-base.safetensors", "sst2", dev_at_kept={"validation_mcc": 0.9})
    save(task_model(COLA_LABELS), tmp_path / "cola.safetensors", "cola")
    assert find_ready_pack(task_model(), "sst2", tmp_path).name == "b-s2.safetensors"
    assert find_ready_pack(task_model(COLA_LABELS), "cola", tmp_path).name == "cola.safetensors"
    assert find_ready_pack(task_model(), "rte", tmp_path) is None


def test_the_pack_forecast_times_single_sentences_with_the_lab_estimator(tokenizer):
    import datasets

    from lab.timing import measure_step_costs

    sentences = datasets.Dataset.from_dict({"sentence": ["the cat sat", "a dog ran far away"] * 4, "label": [0, 1] * 4})
    model = task_model()
    bu.apply_bitfit(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    costs = measure_step_costs(model, tokenizer, sentences, ("bitfit",), batch_size=4, steps=1, task="sst2")
    assert costs.step_seconds["bitfit"] > 0 and 2 <= costs.tokens <= 8  # one sentence each, not a pair
    assert all(torch.equal(before[n], p) and p.grad is None for n, p in model.named_parameters())


def test_settings_and_paths():
    assert task_packs.pack_settings(True) is task_packs.QUICK and task_packs.pack_settings(False) is task_packs.STUDENT
    assert task_packs.QUICK.train_size <= 64 and task_packs.STUDENT.epochs <= 2
    assert str(task_packs.pack_path("SST-2", "packs")) == "packs/sst2_bitfit.safetensors"


def test_make_pack_trains_a_tiny_cola_pack_then_reuses_it_and_prefers_a_ready_one(tmp_path, capsys):
    """The real MiniLM and CoLA, 16 sentences: the plan is printed before training, the pack fits the base."""
    from lab.models import load_model

    tiny = PackSettings(train_size=16, validation_size=8, dev_size=8, epochs=1, batch_size=8)
    path = task_packs.make_pack("cola", tmp_path / "packs", settings=tiny)
    out = capsys.readouterr().out
    assert out.index("Estimated") < out.index("trained in") and "16 of 8,551 train sentences" in out
    _, meta = packs.read_bias_checkpoint(path)
    assert meta["task"] == "cola" and meta["label_names"] == ["unacceptable", "acceptable"]
    assert meta["user"]["settings"]["train_size"] == 16 and "dev_mcc" in meta["user"]
    model, _ = load_model(meta["base_model"], verbose=False, task="cola")
    assert pack_refusal(model, path, "cola") is None
    assert task_packs.make_pack("cola", tmp_path / "packs", settings=tiny) == path  # same settings: no training
    assert "trained before with the same settings" in capsys.readouterr().out
    ready = tmp_path / "ready"
    ready.mkdir()
    (ready / "cola-bitfit-s1.safetensors").write_bytes(path.read_bytes())
    assert task_packs.make_pack("cola", tmp_path / "elsewhere", settings=tiny, ready_dir=ready).parent == ready
    assert "ready pack" in capsys.readouterr().out


def test_subsample_keeps_each_labels_share_and_is_reproducible():
    import datasets

    from lab.task_packs import _subsample

    data = datasets.Dataset.from_dict({"label": [0] * 700 + [1] * 300, "idx": list(range(1000))})
    sample = _subsample(data, 100, seed=3)
    assert len(sample) == 100 and sum(sample["label"]) == 30  # 70 / 30, as in the whole
    assert sample["idx"] == _subsample(data, 100, seed=3)["idx"] != _subsample(data, 100, seed=4)["idx"]
    assert len(set(sample["idx"])) == 100 and _subsample(data, None, seed=3) is data
    assert len(_subsample(data, 10, seed=3, stratify=False)) == 10


def test_the_pack_rate_is_bitfit_s_default_rate_and_the_served_tasks_are_the_spec_s():
    from lab.recipe import DEFAULT_LR
    from lab.tasks import SERVED_TASKS

    assert PackSettings(train_size=1, validation_size=1, dev_size=None, epochs=1).learning_rate == DEFAULT_LR["bitfit"]
    assert inspect.signature(task_packs.serve_tasks).parameters["tasks"].default == SERVED_TASKS == ("sst2", "cola")


# -- the head a trained pack reads through: 02's (tiny BERT and tiny tokenizer instead of the real base) ----------

TINY_PACK = PackSettings(train_size=16, validation_size=8, dev_size=8, epochs=1, batch_size=8)


@pytest.fixture
def tiny_base(monkeypatch, tokenizer):
    """``load_model`` gives the tiny BERT (always the same base, with the task's labels) and the tiny tokenizer."""
    import lab.models

    labels = {None: MRPC_LABELS, "mrpc": MRPC_LABELS, "sst2": SST2_LABELS, "cola": COLA_LABELS}

    def load_model(model_name=None, num_labels=2, verbose=True, task=None):
        model = task_model(labels[task])
        model.config.finetuning_task = task
        return model, tokenizer

    monkeypatch.setattr(lab.models, "load_model", load_model)


def _recipe_head(monkeypatch, head):
    """The study's recipe (``lab.recipe.read_recipe``) chose ``head``; None: no recipe yet."""
    import lab.recipe

    monkeypatch.setattr(lab.recipe, "read_recipe", lambda *a, **k: None if head is None else {"head": head})


def test_a_trained_pack_reads_through_the_head_given_else_02_s(tmp_path, tiny_base, monkeypatch, capsys):
    from lab.heads import pooler_was_trained

    assert not pooler_was_trained(task_model())  # like the offline MiniLM: head_for follows the recipe
    _recipe_head(monkeypatch, "mean")
    path = task_packs.make_pack("cola", tmp_path, settings=TINY_PACK)
    assert packs.read_bias_checkpoint(path)[1]["head"] == "mean" and "mean head" in capsys.readouterr().out
    again = task_packs.make_pack("cola", tmp_path, settings=TINY_PACK, head="cls")  # same settings, another head
    assert again == path and "trained in" in capsys.readouterr().out  # not reused: trained anew
    assert packs.read_bias_checkpoint(path)[1]["head"] == "cls"
    _recipe_head(monkeypatch, None)
    assert task_packs.study_head(task_model()) == "cls" and task_packs.study_head(task_model(), "mean") == "mean"


def test_serve_tasks_trains_the_other_packs_with_the_head_of_02_s_pack(tmp_path, tiny_base, monkeypatch):
    """02's MRPC pack reads the mean of the tokens; the CoLA pack trained beside it must too, or the server refuses."""
    from lab.heads import set_pooling

    _recipe_head(monkeypatch, None)  # without 02's pack the default would be [CLS]
    monkeypatch.setattr(task_packs, "pack_settings", lambda quick: TINY_PACK)
    mrpc = save(set_pooling(task_model(MRPC_LABELS), "mean"), tmp_path / "mrpc_bitfit.safetensors", "mrpc")
    server, paths = task_packs.serve_tasks("tiny-bert", {"mrpc": mrpc}, tmp_path / "packs", tasks=("cola",),
                                           ready_dir=None)
    assert set(server.tasks) == {"mrpc", "cola"} and packs.read_bias_checkpoint(paths["cola"])[1]["head"] == "mean"
