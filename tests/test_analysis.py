"""bias_changes, its heatmap, the Trainer set-up and the history table."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import bitfit_utils as bu
from lab import packs
from lab.analysis import bias_changes, plot_bias_changes, plot_history
from lab.training import history_frame, make_trainer
from conftest import tiny_bert


def test_bias_changes_is_the_papers_measure():
    base, tuned = tiny_bert(), tiny_bert()
    with torch.no_grad():
        tuned.bert.encoder.layer[1].attention.self.query.bias.add_(torch.arange(16.0))  # mean |d| = 7.5
        tuned.bert.pooler.dense.bias.sub_(2.0)
    changes = bias_changes(base, tuned)
    assert list(changes.index) == ["0", "1", "embeddings", "pooler"]
    assert changes.loc["1", "query"] == pytest.approx(7.5)
    assert changes.loc["pooler", "pooler"] == pytest.approx(2.0)
    assert changes.loc["0"].sum() == 0 and np.isnan(changes.loc["0", "pooler"])
    fig = plot_bias_changes(changes)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() == "bias group" and ax.get_ylabel() == "layer"


def test_bias_changes_refuses_other_architectures():
    with pytest.raises(ValueError, match="compare the same architecture"):
        bias_changes(tiny_bert(num_labels=2, intermediate_size=8), tiny_bert())


def test_trainer_optimises_only_trainable_and_records_history(tmp_path, tokenizer):
    from datasets import Dataset

    model = tiny_bert()
    bu.apply_bitfit(model)
    rng = np.random.default_rng(0)
    rows = [{"input_ids": [int(i) for i in rng.integers(5, 33, n)], "attention_mask": [1] * int(n),
             "label": int(n % 2)} for n in rng.integers(4, 12, 40)]
    data = Dataset.from_list(rows)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(model, tokenizer, data, data, tmp_path, learning_rate=1e-2, epochs=2,
                              batch_size=8, disable_tqdm=True)
    opt_params = {id(p) for g in trainer.create_optimizer().param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    trainer.train()
    history = history_frame(trainer)
    assert list(history.index) == [1.0, 2.0]
    assert {"train_loss", "eval_accuracy", "eval_f1"} <= set(history.columns)
    frozen_changed = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    assert frozen_changed == []
    fig = plot_history(history)
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in fig.axes)


def test_full_model_size_draws_no_progress_bar(capfd):
    from transformers.utils import logging

    from lab.analysis import full_model_size_mb

    model = tiny_bert()
    size = full_model_size_mb(model)
    assert size * 1e6 > 4 * sum(p.numel() for p in model.parameters()) * 0.99  # fp32, whole model
    out, err = capfd.readouterr()
    assert "Writing model shards" not in out + err and "\r" not in out + err
    assert logging.is_progress_bar_enabled()  # put back as it was


def test_interleaved_latency_times_every_model_on_the_same_inputs(inputs):
    from lab.analysis import interleaved_latency

    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, **batch):
            calls.append((self.name, tuple(batch)))

    ms = interleaved_latency({"base": Counting("base"), "bitfit": Counting("bitfit")}, inputs, rounds=2)
    assert set(ms) == {"base", "bitfit"} and all(v >= 0 for v in ms.values())
    assert [name for name, _ in calls[:12]] == ["base"] * 6 + ["bitfit"] * 6  # turns: 1 warm-up + 5 timed each
    assert len(calls) == 24 and {keys for _, keys in calls} == {tuple(inputs)}


def test_predictions_frame_and_confusion_plot_show_what_the_model_said():
    from lab.analysis import plot_confusion, predictions_frame

    pairs = [("a b", "a c"), ("d", "e"), ("f", "g")]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    table = predictions_frame(pairs, probs)
    assert list(table["prediction"]) == ["equivalent", "not_equivalent", "equivalent"]
    assert list(table["p(equivalent)"]) == [0.8, 0.1, 0.6] and list(table["sentence2"]) == ["a c", "e", "g"]
    assert list(predictions_frame(pairs, probs, true=[1, 1, 0])["true"]) == ["equivalent", "equivalent", "not_equivalent"]
    ax = plot_confusion([1, 1, 0], probs, "t")
    counts = [int(t.get_text()) for t in ax.texts]
    assert counts == [0, 1, 1, 1]  # rows true 0/1, columns predicted 0/1


def test_switch_packs_times_each_load_and_verifies_the_last(tmp_path, tokenizer):
    from lab.analysis import switch_packs

    model = tiny_bert(max_position_embeddings=128)
    bu.apply_bitfit(model)
    first = packs.save_bias_checkpoint(model, tmp_path / "a.safetensors", task="t")
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.bias.add_(1.0)
        model.classifier.bias.add_(1.0)
    second = packs.save_bias_checkpoint(model, tmp_path / "b.safetensors", task="t")
    probe = [("the cat", "a cat"), ("cat", "the")]
    result = switch_packs(model, tokenizer, [first, second, first, second], probe)
    assert [len(v) for v in result["ms"].values()] == [2, 2] and all(t > 0 for v in result["ms"].values() for t in v)
    assert result["restored"] and result["same_probabilities"]  # ends on the pack it started with
    result = switch_packs(model, tokenizer, [first], probe)
    assert result["restored"] and not result["same_probabilities"]  # a different pack: other outputs
