"""lab.study: 02 reads the study's settings and headline from whatever results/ holds, and says true things."""

import json
import math

import pandas as pd
import pytest

from lab.study import DEFAULT_SETTINGS, headline, headline_sentences, lr_text, settings_note, study_settings, \
    this_run_sentences


def fake_run(method, lr, seed, part, accuracy, mcc=0.3, epochs=4):
    """A run file as compare_methods writes it, with a made-up log (validation peaks at epoch 2)."""
    log = [{"epoch": float(e), "train_seconds": 60.0 * e, "train_loss": 0.6,
            **{f"{split}_{metric}": value for split in ("validation", "dev")
               for metric, value in (("loss", 0.5), ("accuracy", accuracy / 100 - 0.02 * abs(e - 2)),
                                     ("f1", 0.85), ("mcc", mcc - 0.01 * abs(e - 2)))}}
           for e in range(1, epochs + 1)]
    return {"part": part, "method": method, "lr": lr, "seed": seed, "name": f"{part}-{method}-lr{lr:g}-s{seed}",
            "quick": False, "epochs": epochs, "trainable": 100, "total": 1000, "trainable_pct": 10.0,
            "checkpoint_bytes": 116_000, "validation_majority": 0.68, "dev_positive_share": 0.684, "log": log}


@pytest.fixture
def results(tmp_path):
    """A results folder written by the study's own report from fake runs: frozen, bitfit, full grids done."""
    from benchmarks.compare_methods import METHODS
    from benchmarks.study_report import report

    runs = tmp_path / "runs"
    runs.mkdir()
    best = {"frozen": 1e-2, "bitfit": 3e-3, "full": 2e-5}
    score = {"frozen": 68.4, "bitfit": 80.0, "full": 78.0}
    for method in best:
        for lr in METHODS[method].lrs:
            run = fake_run(method, lr, 0, "grid", score[method], mcc=0.4 if lr == best[method] else 0.2,
                           epochs=METHODS[method].epochs)
            (runs / f"{run['name']}.json").write_text(json.dumps(run))
    for seed, accuracy in ((1, 78.0), (2, 82.0)):
        run = fake_run("bitfit", best["bitfit"], seed, "seeds", accuracy, epochs=METHODS["bitfit"].epochs)
        (runs / f"{run['name']}.json").write_text(json.dumps(run))
    report(tmp_path)
    return tmp_path, best


def test_no_results_yet_means_the_defaults_and_no_headline(tmp_path):
    assert study_settings(tmp_path) == {}
    assert headline(tmp_path) is None and headline_sentences(tmp_path, 68.4, 408) == []
    note = settings_note(DEFAULT_SETTINGS, {}, tmp_path)
    assert note.count("default") == len(DEFAULT_SETTINGS) and "lr 1e-3, at most 6 epochs" in note


def test_the_defaults_use_the_study_epochs_and_a_rate_of_its_grid():
    from benchmarks.compare_methods import METHODS

    for method, (rate, epochs) in DEFAULT_SETTINGS.items():
        assert epochs == METHODS[method].epochs and rate in METHODS[method].lrs


def test_the_chosen_settings_come_from_the_grid(results):
    folder, best = results
    from benchmarks.compare_methods import METHODS

    chosen = study_settings(folder)
    assert chosen == {m: (best[m], METHODS[m].epochs) for m in best}
    note = settings_note({**DEFAULT_SETTINGS, **chosen}, chosen, folder)
    assert note.count("the study's choice") == 3 and "lr 3e-3" in note


def test_headline_and_its_sentences_say_what_the_table_holds(results):
    folder, _ = results
    table = headline(folder)
    assert list(table.index) == ["Frozen (head only)", "BitFit", "Full FT"]
    assert table.loc["BitFit", "seeds"] == 3 and table.loc["BitFit", "dev accuracy"].startswith("80.0 ± ")
    said = headline_sentences(folder, majority_accuracy=68.4, dev_pairs=408)
    assert 3 <= len(said) <= 5
    assert "驗證集 MCC" in said[0] and "3 個學習率" in said[0] and "0.25 分" in said[0]
    assert any("BitFit 的 dev accuracy 80.0" in s and "Full FT 78.0" in s and "+2.0" in s for s in said)
    assert any("停在多數類" in s for s in said)  # frozen scored exactly the majority class
    assert "LoRA" in said[-1] and "還沒跑完" in said[-1]  # lora and beft have no rows: said so


def test_this_run_sentences_label_unequal_training():
    table = pd.DataFrame({"max_epochs": [2, 1, 1], "steps": [414, 207, 207], "kept_epoch": [2.0, 1.0, 1.0],
                          "dev_accuracy": [75.0, 70.0, 68.4], "train_s": [120.0, 90.0, 30.0]},
                         index=["BitFit", "Full FT", "Frozen (head only)"])
    said = this_run_sentences(table, majority_accuracy=68.4, dev_pairs=408)
    assert "訓練量不同" in said[0] and "414 步" in said[0]
    assert any("+5.0 分 = 20 對" in s for s in said)
    assert any("停在多數類" in s for s in said)
    same = table.assign(max_epochs=[1, 1, 1], steps=[207, 207, 207])
    assert not any("訓練量不同" in s for s in this_run_sentences(same, 68.4, 408))


@pytest.mark.parametrize("rate, text", [(1e-3, "1e-3"), (5e-5, "5e-5"), (1e-2, "1e-2"), (3e-4, "3e-4"),
                                        (2.5e-5, "2.5e-5")])
def test_lr_text(rate, text):
    assert lr_text(rate) == text and math.isclose(float(text), rate)
