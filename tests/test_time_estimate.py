"""The time estimate printed before a training: arithmetic, the hint, the callback (fake clock)."""

from types import SimpleNamespace

import bitfit_utils as bu
import lab.training
from lab.data import tokenize_pairs
from lab.models import OFFLINE_MODEL
from lab.training import LONG_TRAINING_S, TimeEstimate, estimate_seconds, faster_paths_hint, make_trainer


def test_estimate_adds_evaluation_at_a_third_of_a_step_per_pair():
    # 100 steps of 2 s, 3 evals of 96 pairs at batch 32: 3 * 3 batches * 2 s / 3 = 6 s
    assert estimate_seconds(2.0, 100, 3, 96, 32) == 206.0
    assert estimate_seconds(2.0, 100, 0, 96, 32) == 200.0


def test_hint_names_the_faster_paths_only_when_long():
    assert faster_paths_hint(LONG_TRAINING_S, "cpu") == ""
    long_cpu = faster_paths_hint(2 * 3600, "cpu")
    assert "BITFIT_DEMO=1" in long_cpu and OFFLINE_MODEL in long_cpu and "GPU" in long_cpu
    assert "GPU" not in faster_paths_hint(2 * 3600, "cuda")


def test_callback_times_steps_after_the_first_and_prints_once(monkeypatch, capsys):
    clock = iter([10.0, 10.0 + 4 * 1.5])  # step 1 ends at 10 s, four more steps take 1.5 s each
    monkeypatch.setattr(lab.training.time, "perf_counter", lambda: next(clock))
    callback = TimeEstimate(eval_pairs=0, probe_steps=4)
    args = SimpleNamespace(num_train_epochs=2, eval_strategy="no", per_device_train_batch_size=32)
    for step in range(1, 11):
        callback.on_step_end(args, SimpleNamespace(global_step=step, max_steps=1000), None)
    out = capsys.readouterr().out
    assert out.count("Time estimate") == 1
    assert "1.50 s per step x 1000 steps" in out and "about 25.0 min" in out and "BITFIT_DEMO=1" in out


def test_make_trainer_prints_an_estimate(model, tokenizer, tmp_path, capsys):
    import datasets

    pairs = datasets.Dataset.from_dict({"sentence1": ["the cat"] * 16, "sentence2": ["a cat"] * 16,
                                        "label": [0, 1] * 8, "idx": list(range(16))})
    encoded = tokenize_pairs(pairs, tokenizer)
    bu.apply_bitfit(model)
    trainer = make_trainer(model, tokenizer, encoded, encoded, tmp_path, learning_rate=1e-3, epochs=4,
                              batch_size=2, select_by=None, disable_tqdm=True)
    trainer.train()
    assert "Time estimate" in capsys.readouterr().out
