"""The time estimate printed before a training: arithmetic, the hint, the callback (fake clock)."""

import dataclasses

import pytest

import bitfit_utils as bu
import lab.timing
from lab.data import tokenize_pairs
from lab.models import OFFLINE_MODEL
from lab.timing import faster_paths
from lab.training import make_trainer


def test_make_trainer_prints_one_line_per_epoch_without_a_progress_table(model, tokenizer, tmp_path, capsys):
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils.notebook import NotebookProgressCallback

    pairs = datasets.Dataset.from_dict({"sentence1": ["the cat"] * 16, "sentence2": ["a cat"] * 16,
                                        "label": [0, 1] * 8, "idx": list(range(16))})
    encoded = tokenize_pairs(pairs, tokenizer)
    bu.apply_bitfit(model)
    trainer = make_trainer(model, tokenizer, encoded, encoded, tmp_path, learning_rate=1e-3, epochs=2,
                           batch_size=4, select_by="mcc")  # the defaults: what a student's own call gets
    assert not {type(c) for c in trainer.callback_handler.callbacks} & {PrinterCallback, NotebookProgressCallback}
    trainer.train()
    out = capsys.readouterr().out
    assert "epoch 1 of at most 2: mcc" in out and "epoch 2 of at most 2: mcc" in out
    assert "{'" not in out  # no log printed as a dict
    assert "Time estimate" not in out  # one forecast: the notebook's section 0


def test_the_faster_paths_name_the_offline_model_only_when_another_is_in_use():
    assert any(OFFLINE_MODEL in p for p in faster_paths("cpu", "bert-base-uncased"))
    assert not any(OFFLINE_MODEL in p for p in faster_paths("cpu", OFFLINE_MODEL))
    assert any("GPU" in p for p in faster_paths("cpu")) and not any("GPU" in p for p in faster_paths("cuda"))


def test_the_demo_is_offered_only_on_a_cpu_and_only_when_it_is_off():
    assert any("BITFIT_DEMO" in p for p in faster_paths("cpu", OFFLINE_MODEL))
    assert faster_paths("cpu", OFFLINE_MODEL, demo=True) == ["a GPU, e.g. Colab: Runtime > Change runtime type > GPU"]
    assert faster_paths("cuda", OFFLINE_MODEL) == []  # on a GPU the demo changes nothing


# -- the estimate of a whole notebook, printed before it trains --------------------------------

from lab.timing import (LONG_RUN_S, LongRunStopped, StepCosts, check_long_run, estimate_trainings,  # noqa: E402
                          measure_step_costs, plan_training, planned_seconds, time_estimate_text)


def costs(**step_seconds):
    return StepCosts(step_seconds or {"bitfit": 0.5, "full": 1.0}, eval_pair_seconds=0.01, batch_size=32,
                     probe_pairs=8, tokens=53, timed_steps=3, device="cpu")


def test_a_plan_counts_steps_per_epoch_rounded_up_and_one_evaluation_per_epoch():
    plan = plan_training("BitFit", "bitfit", train_pairs=3301, batch_size=32, epochs=6, eval_pairs=775)
    assert (plan.steps, plan.evals, plan.eval_pairs) == (104 * 6, 6, 775)  # 3301 / 32 = 103.2 -> 104 steps
    assert plan_training("x", "full", 64, 32, 1, 0).steps == 2


def test_planned_seconds_are_steps_times_their_cost_plus_the_scored_pairs():
    assert planned_seconds(0.5, 100, 2, 300, 0.01) == 50 + 6
    plans = [plan_training("a", "bitfit", 320, 32, 2, 100), plan_training("b", "full", 320, 32, 1, 100)]
    assert estimate_trainings(costs(), plans) == {"a": 0.5 * 20 + 2 * 100 * 0.01, "b": 1.0 * 10 + 100 * 0.01}


def test_the_text_lists_each_training_the_total_and_the_switches():
    plans = [plan_training("section 3 BitFit", "bitfit", 3200, 32, 6, 775),
             plan_training("exercise 3", "bitfit", 3200, 32, 1, 775)]
    text = time_estimate_text(costs(), plans, "bert-base-uncased", optional=("exercise 3",))
    total = estimate_trainings(costs(), plans)["section 3 BitFit"]  # the exercise is not in the total
    assert f"about {total / 60:.1f} min" in text and "only if you do it" in text
    assert "BITFIT_DEMO=1" in text and OFFLINE_MODEL in text and "Colab" in text
    assert "ALLOW_LONG_RUN" not in text  # short: no warning
    long_text = time_estimate_text(costs(bitfit=20.0), plans, "bert-base-uncased")
    assert f"more than {LONG_RUN_S / 3600:.1f} h" in long_text and "ALLOW_LONG_RUN = True" in long_text
    in_demo = time_estimate_text(costs(), plans, OFFLINE_MODEL, demo=True)  # the demo on a CPU: only a GPU is left
    assert "BITFIT_DEMO" not in in_demo and "Faster: a GPU" in in_demo
    on_gpu = dataclasses.replace(costs(), device="cuda")  # nothing faster to offer with the offline model
    assert "Faster" not in time_estimate_text(on_gpu, plans, OFFLINE_MODEL)


def test_a_run_of_more_than_an_hour_stops_unless_allowed():
    plans = [plan_training("BitFit", "bitfit", 32 * 100, 32, 1, 0)]
    short, long = costs(bitfit=LONG_RUN_S / 100 - 1), costs(bitfit=LONG_RUN_S / 100 + 1)
    check_long_run(short, plans, allowed=False)
    check_long_run(long, plans, allowed=True)
    with pytest.raises(LongRunStopped, match="ALLOW_LONG_RUN = True"):
        check_long_run(long, plans, allowed=False)
    check_long_run(long, plans, allowed=False, optional=("BitFit",))  # optional trainings never stop it


def test_measuring_times_a_few_steps_per_method_and_leaves_the_model_as_it_was(model, tokenizer, monkeypatch):
    import datasets
    import torch

    monkeypatch.setattr(lab.timing, "get_device", lambda: torch.device("cpu"))
    ticks = iter(range(1000))  # a fake clock: every reading is one second after the previous one
    pairs = datasets.Dataset.from_dict({"sentence1": ["the cat", "a cat sat"] * 4, "sentence2": ["a cat"] * 8})
    bu.apply_bitfit(model)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    measured = measure_step_costs(model, tokenizer, pairs, batch_size=32, probe_pairs=4, steps=3,
                                  clock=lambda: float(next(ticks)))
    # every timed step reads the clock twice, one second apart: 1 s a step on 4 pairs -> x 8 for batch 32
    assert measured.step_seconds == pytest.approx({"frozen": 8.0, "bitfit": 8.0, "full": 8.0})
    assert measured.eval_pair_seconds == pytest.approx(1 / 4)
    assert (measured.probe_pairs, measured.timed_steps, measured.device, measured.batch_size) == (4, 3, "cpu", 32)
    assert measured.tokens == round(sum(len(tokenizer(a, b)["input_ids"]) for a, b in
                                        zip(pairs["sentence1"], pairs["sentence2"])) / len(pairs))
    for name, param in model.named_parameters():  # learning rate 0: no weight moved; flags put back
        assert torch.equal(param, before[name][0]) and param.requires_grad == before[name][1] and param.grad is None
    assert not hasattr(model, "bitfit_bias_terms")  # nothing is patched onto the model


def test_one_step_slowed_by_another_program_does_not_count(model, tokenizer, monkeypatch):
    import datasets
    import torch

    monkeypatch.setattr(lab.timing, "get_device", lambda: torch.device("cpu"))
    readings = iter([0, 1, 1, 11, 11, 12] + [12, 13, 13, 14, 14, 15])  # bitfit: 1 s, 10 s, 1 s; scoring: 1 s each
    pairs = datasets.Dataset.from_dict({"sentence1": ["the cat"] * 4, "sentence2": ["a cat"] * 4})
    measured = measure_step_costs(model, tokenizer, pairs, ("bitfit",), batch_size=4, steps=3,
                                  clock=lambda: float(next(readings)))
    assert measured.step_seconds == {"bitfit": 1.0} and measured.probe_pairs == 4


def test_exercise_3_text_times_one_bitfit_epoch_and_names_what_it_is_compared_with(tmp_path):
    from pathlib import Path

    from lab.recipe import exercise_3_text, run_settings

    run = run_settings(False, False, "m", "cpu", tmp_path)  # batch 32
    splits = {"train": range(320), "validation": range(40), "dev": range(60)}
    c = costs(bitfit=0.5, frozen=0.2, full=1.0)
    text = exercise_3_text(c, run, splits, "m", object())  # a live trainer
    # one epoch: 10 steps x 0.5 s + 100 scored pairs x 0.01 s = 6 s = 0.1 min
    assert text == "Exercise 3 is compared with section 3; it trains one epoch: about 0.1 min with m on this cpu."
    assert "compared with packs/p.safetensors;" in exercise_3_text(c, run, splits, "m", Path("packs/p.safetensors"))
    after_restart = costs(bitfit=0.5)  # rebuild_for_02 times BitFit only
    assert exercise_3_text(after_restart, run, splits, "m", object()) == text


@pytest.mark.parametrize("bf16", [True, False])
def test_measuring_with_bf16_times_the_steps_under_autocast(model, tokenizer, monkeypatch, bf16):
    import datasets
    import torch

    monkeypatch.setattr(lab.timing, "get_device", lambda: torch.device("cpu"))
    seen = []
    model.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    pairs = datasets.Dataset.from_dict({"sentence1": ["the cat"] * 4, "sentence2": ["a cat"] * 4})
    measure_step_costs(model, tokenizer, pairs, ("bitfit",), batch_size=4, steps=1, bf16=bf16)
    assert seen and set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
