"""bias_changes, its heatmap, the Trainer set-up and the history table."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import bitfit_utils as bu
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
