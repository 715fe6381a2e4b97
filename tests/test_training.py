"""Lean checkpoints: make_trainer keeps the best epoch's trainable tensors in memory, writes no checkpoint.

Tiny BERT, a few token-id pairs, a few epochs: seconds. The epochs' tensors are captured by a
callback of the test's own and compared exactly with what the model holds after ``train()``.
"""

import math
from types import SimpleNamespace

import datasets
import pytest
import torch
from torch import nn
from transformers import TrainerCallback

import bitfit_utils as bu
import lab.training
from lab.training import KeepBest, kept_epoch, make_trainer, train_method
from conftest import tiny_bert


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A tiny model gains nothing from threads; on a busy machine their waiting costs seconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pairs(n: int, seed: int) -> datasets.Dataset:
    """``n`` random 'pairs' of token ids the tiny model understands, labels 0/1."""
    gen = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "token_type_ids": [], "attention_mask": [], "label": []}
    for i in range(n):
        length = 6 + i % 5
        rows["input_ids"].append([2] + torch.randint(5, 30, (length,), generator=gen).tolist() + [3])
        rows["token_type_ids"].append([0] * (length + 2))
        rows["attention_mask"].append([1] * (length + 2))
        rows["label"].append(i % 2)
    return datasets.Dataset.from_dict(rows)


class CaptureEpochs(TrainerCallback):
    """Record ``(epoch, metric value, copy of the trainable tensors)`` at every evaluation that has ``metric``."""

    def __init__(self, metric: str):
        self.metric, self.epochs = metric, []

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if self.metric in (metrics or {}):
            trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.epochs.append((round(state.epoch, 2), metrics[self.metric], trainable))


def train_bitfit(tokenizer, out, eval_sets, select_by, scripted=None, epochs=4):
    """BitFit on the tiny model with make_trainer; ``scripted``: fake metric values, one per evaluation."""
    model = tiny_bert()
    bu.apply_bitfit(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = make_trainer(model, tokenizer, pairs(24, seed=0), eval_sets, out, learning_rate=5e-2,
                           epochs=epochs, batch_size=4, warmup=0.0, select_by=select_by, disable_tqdm=True)
    capture = CaptureEpochs(f"eval_{select_by}")
    trainer.add_callback(capture)
    if scripted is not None:
        values = iter(scripted)
        trainer.compute_metrics = lambda eval_pred: {"mcc": next(values)}
    trainer.train()
    return model, trainer, capture, frozen


def assert_holds(model, trainable):
    params = dict(model.named_parameters())
    assert set(trainable) == {n for n, p in params.items() if p.requires_grad}
    assert all(torch.equal(params[n], t) for n, t in trainable.items())


def test_best_validation_epoch_is_kept_and_nothing_is_written(tokenizer, tmp_path):
    eval_sets = {"validation": pairs(12, seed=1), "dev": pairs(12, seed=2)}
    model, trainer, capture, frozen = train_bitfit(tokenizer, tmp_path / "out", eval_sets, "validation_mcc")

    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert not [p for p in written if "checkpoint" in str(p) or p.suffix in {".safetensors", ".bin", ".pt", ".pth"}]
    assert [e for e, _, _ in capture.epochs] == [1.0, 2.0, 3.0, 4.0]
    assert not torch.equal(*(capture.epochs[i][2]["classifier.weight"] for i in (0, -1)))  # training moved them
    best = max(v for _, v, _ in capture.epochs)
    epoch, _, trainable = next(c for c in capture.epochs if c[1] == best)  # the first epoch with the best value
    assert kept_epoch(trainer) == epoch
    assert_holds(model, trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_an_earlier_best_epoch_is_restored_and_ties_keep_the_earlier(tokenizer, tmp_path):
    model, trainer, capture, frozen = train_bitfit(tokenizer, tmp_path / "out", pairs(12, seed=1), "mcc",
                                                   scripted=[0.2, 0.6, 0.6, 0.4])
    assert [v for _, v, _ in capture.epochs] == [0.2, 0.6, 0.6, 0.4]
    assert kept_epoch(trainer) == 2.0
    kept = capture.epochs[1][2]
    assert_holds(model, kept)
    for later in (capture.epochs[2][2], capture.epochs[3][2]):  # the model did move on after epoch 2
        assert not all(torch.equal(kept[n], later[n]) for n in kept)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_keep_best_copies_only_the_trainable_tensors(tokenizer, tmp_path):
    model, trainer, _, _ = train_bitfit(tokenizer, tmp_path / "out", pairs(12, seed=1), "mcc", epochs=1)
    keep = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, KeepBest))
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert sorted(keep._kept) == sorted(trainable) and len(keep._kept) < len(params)
    assert sum(t.numel() for t in keep._kept.values()) == bu.count_parameters(model)[0]
    assert all(t.data_ptr() != params[n].data_ptr() for n, t in keep._kept.items())  # copies, not views


def test_select_by_none_keeps_the_last_epoch(tokenizer, tmp_path):
    model, trainer, capture, _ = train_bitfit(tokenizer, tmp_path / "out", pairs(12, seed=1), None, epochs=2)
    assert kept_epoch(trainer) is None
    assert not any(isinstance(cb, KeepBest) for cb in trainer.callback_handler.callbacks)


def test_on_evaluate_ties_keep_the_earlier_epoch_and_other_metrics_are_ignored():
    model = nn.Linear(2, 2)
    model.weight.requires_grad_(False)
    keep, state = KeepBest("eval_mcc"), SimpleNamespace(epoch=0.0, log_history=[])
    for epoch, bias, metrics in [(1.0, 1.0, {"eval_mcc": 0.5}), (1.0, 1.5, {"eval_dev_mcc": 0.9}),
                                 (2.0, 2.0, {"eval_mcc": 0.5}), (3.0, 3.0, {"eval_mcc": 0.3}),
                                 (4.0, 4.0, {"eval_mcc": math.nan}), (5.0, 5.0, None)]:
        state.epoch = epoch
        with torch.no_grad():
            model.bias.fill_(bias)
        keep.on_evaluate(SimpleNamespace(num_train_epochs=9), state, SimpleNamespace(should_training_stop=False),
                         model=model, metrics=metrics)
    assert (keep.best_epoch, keep.best_value) == (1.0, 0.5)
    assert list(keep._kept) == ["bias"] and torch.equal(keep._kept["bias"], torch.ones(2))
    weight = model.weight.detach().clone()
    keep.on_train_end(None, state, None, model=model)
    assert torch.equal(model.bias, torch.ones(2)) and torch.equal(model.weight, weight)
    assert state.log_history[-1] == {"epoch": 5.0, "kept_epoch": 1.0, "kept_eval_mcc": 0.5}


def test_train_method_trains_a_fresh_seeded_model_with_the_methods_parameters(tokenizer, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(lab.training, "load_model", lambda name, verbose=True: (loads.append(name) or tiny_bert(
        seed=torch.initial_seed() % 1000), tokenizer))
    eval_sets = {"validation": pairs(12, seed=1), "dev": pairs(12, seed=2)}
    run = lambda out: train_method("frozen", "tiny", tokenizer, pairs(24, seed=0), eval_sets, tmp_path / out,
                                   learning_rate=5e-2, epochs=2, batch_size=4, seed=7, warmup=0.0, disable_tqdm=True)
    first, again = run("a"), run("b")
    assert loads == ["tiny", "tiny"]
    trained = {n for n, p in first.model.named_parameters() if p.requires_grad}
    assert trained == {"classifier.weight", "classifier.bias"}  # frozen: the head only
    fresh = tiny_bert(seed=7)
    assert not torch.equal(first.model.classifier.weight, fresh.classifier.weight)  # the head was trained
    assert torch.equal(first.model.bert.pooler.dense.weight, fresh.bert.pooler.dense.weight)  # the rest was not
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), again.model.parameters()))  # seeded
    assert kept_epoch(first) in (1.0, 2.0)


def test_kept_text_says_what_was_kept_in_the_line_the_demo_timer_reads(tokenizer, tmp_path):
    from benchmarks.time_demo import BITFIT_LINE
    from lab.study import kept_text
    from lab.training import kept_row

    eval_sets = {"validation": pairs(12, seed=1), "dev": pairs(12, seed=2)}
    _, trainer, _, _ = train_bitfit(tokenizer, tmp_path / "out", eval_sets, "validation_mcc", epochs=2)
    line = BITFIT_LINE.search(kept_text("BitFit", trainer, 12.3))
    kept = kept_row(trainer)
    assert line and line["lr"] == "5e-2" and line["epochs"] == "2" and float(line["kept"]) == kept.name
    assert float(line["acc"]) == round(100 * kept["eval_dev_accuracy"], 1) and line["train_s"] == "12"


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_trains_under_autocast_and_keeps_the_weights_float32(tokenizer, tmp_path, bf16):
    """The CPU demo's precision: matrix products in bf16, every tensor of the model still float32."""
    model = tiny_bert()
    bu.apply_bitfit(model)
    seen = []
    query = model.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer = make_trainer(model, tokenizer, pairs(8, seed=0), pairs(4, seed=1), tmp_path, learning_rate=5e-2,
                           epochs=1, batch_size=4, warmup=0.0, select_by=None, bf16=bf16, disable_tqdm=True)
    before = query.bias.detach().clone()
    trainer.train()
    assert trainer.args.bf16 is bf16 and seen
    assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not torch.equal(query.bias, before)



def test_a_higher_epoch_cap_leaves_the_epochs_before_it_unchanged(tokenizer, tmp_path):
    """The study raises its cap and keeps the runs the rule stopped: their epochs must not depend on the cap."""
    eval_sets = {"validation": pairs(12, seed=1), "dev": pairs(12, seed=2)}
    logs = []
    for epochs in (2, 4):
        model = tiny_bert()
        bu.apply_bitfit(model)
        trainer = make_trainer(model, tokenizer, pairs(24, seed=0), eval_sets, tmp_path / str(epochs),
                               learning_rate=5e-2, epochs=epochs, batch_size=4, select_by=None)  # half-epoch warm-up
        capture = CaptureEpochs("eval_validation_loss")
        trainer.add_callback(capture)
        trainer.train()
        logs.append(capture.epochs)
    short, long = logs
    assert [e for e, _, _ in long] == [1.0, 2.0, 3.0, 4.0]
    for (e, loss, tensors), (e2, loss2, tensors2) in zip(short, long[:2]):
        assert e == e2 and loss == loss2 and all(torch.equal(tensors[n], tensors2[n]) for n in tensors)


class Killed(Exception):
    """Stands for the process being killed."""


class KillAfterSave(TrainerCallback):
    """Raise ``Killed`` once the checkpoint of ``epoch`` is complete (this callback runs after KeepBest's on_save)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_save(self, args, state, control, **kwargs):
        if round(state.epoch) == self.epoch:
            raise Killed


def checkpointed_run(tokenizer, out, setup, kill_after=None, patience=None):
    """A run with checkpoints on (dropout active, real metrics); resumed from ``out`` if it holds a checkpoint."""
    from lab.training import resume_point

    model = tiny_bert(hidden_dropout_prob=0.3)
    setup(model)
    eval_sets = {"validation": pairs(12, seed=1), "dev": pairs(12, seed=2)}
    trainer = make_trainer(model, tokenizer, pairs(24, seed=0), eval_sets, out, learning_rate=5e-2, epochs=4,
                           batch_size=4, patience=patience, checkpoints=True)
    if kill_after is not None:
        trainer.add_callback(KillAfterSave(kill_after))
    trainer.train(resume_from_checkpoint=resume_point(out))
    return model, trainer


@pytest.mark.parametrize("method", ["bitfit", "lora", "beft_all", "full"])
def test_a_run_stopped_midway_and_resumed_ends_as_an_unbroken_run(tokenizer, tmp_path, method):
    """The study's long runs outlive a session: resumed from its last checkpoint, a run must equal an unbroken one."""
    from lab.registry import setup
    from lab.training import history_frame, resume_point

    def prepare(model):
        setup(model, method, 0)

    unbroken, t_unbroken = checkpointed_run(tokenizer, tmp_path / "a", prepare)
    with pytest.raises(Killed):
        checkpointed_run(tokenizer, tmp_path / "b", prepare, kill_after=2)
    assert resume_point(tmp_path / "b").endswith("checkpoint-12")  # 24 pairs / 4 = 6 steps an epoch
    resumed, t_resumed = checkpointed_run(tokenizer, tmp_path / "b", prepare)
    a, b = history_frame(t_unbroken), history_frame(t_resumed)
    assert list(a.index) == list(b.index) == [1.0, 2.0, 3.0, 4.0]
    cols = [c for c in a.columns if c != "train_seconds"]
    assert a[cols].equals(b[cols])
    assert kept_epoch(t_unbroken) == kept_epoch(t_resumed)
    assert b["train_seconds"].is_monotonic_increasing  # the resumed run adds to the seconds it had
    p, q = dict(unbroken.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(p[n], q[n]) for n in p)


def test_the_epoch_that_ends_a_run_is_not_checkpointed_and_an_incomplete_checkpoint_is_not_resumed(tokenizer, tmp_path):
    from lab.training import KEPT_FILE, resume_point

    checkpointed_run(tokenizer, tmp_path, bu.apply_bitfit)  # 4 epochs of 4: the last is not saved
    steps = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert steps == [12, 18]  # the two newest of epochs 1-3
    assert resume_point(tmp_path).endswith("checkpoint-18")
    (tmp_path / "checkpoint-18" / KEPT_FILE).unlink()  # killed while writing it
    assert resume_point(tmp_path).endswith("checkpoint-12")
    assert resume_point(tmp_path / "nothing-here") is None


def test_checkpoints_need_an_epoch_to_keep(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="select_by"):
        make_trainer(tiny_bert(), tokenizer, pairs(8, seed=0), pairs(4, seed=1), tmp_path, learning_rate=1e-3,
                     epochs=1, select_by=None, checkpoints=True)
