"""Protocol 3 of the study: its stages, its rule (patience, no tuning seed reported) and its report."""

import json
import math

import pytest

from lab.selection import best_entry, selection_key, should_stop
from study import report as rp
from study import run as sr
from lab.registry import HEADLINE, METHODS


def _run(part, method, head, lr, seed, log, **extra):
    """A run file as run_one writes it, with a made-up log [(val_mcc, val_acc, dev_acc), ...]."""
    spec = {"part": part, "method": method, "head": head, "lr": lr, "seed": seed, "quick": False}
    entries = [{"epoch": float(i + 1), "train_seconds": 50.0 * (i + 1), "validation_mcc": m, "validation_accuracy": a,
                "validation_f1": 0.8, "dev_accuracy": d, "dev_f1": 0.8, "dev_mcc": 0.1}
               for i, (m, a, d) in enumerate(log)]
    kept = best_entry(entries)["epoch"]
    return {**spec, "name": sr.spec_name(spec), "max_epochs": sr.MAX_EPOCHS, "last_epoch": float(len(log)),
            "kept_epoch": kept, "kept_at_cap": kept >= sr.MAX_EPOCHS, "trainable": 10, "total": 100, "train_pairs": 3000,
            "trainable_pct": 10.0, "checkpoint_bytes": 1000, "device": "cpu", "concurrent_runs": 2,
            "wall_seconds": 60.0 * len(log), "validation_majority": 0.67, "log": entries, **extra}


def test_ties_break_on_accuracy_then_on_the_earlier_epoch():
    log = [{"epoch": 1.0, "validation_mcc": 0.4, "validation_accuracy": 0.70},
           {"epoch": 2.0, "validation_mcc": 0.4, "validation_accuracy": 0.75},
           {"epoch": 3.0, "validation_mcc": 0.4, "validation_accuracy": 0.75}]
    assert best_entry(log)["epoch"] == 2.0
    assert selection_key(log[1]) > selection_key(log[2]) > selection_key(log[0])
    # the majority class (MCC 0) never wins, however high its accuracy
    assert best_entry([{"epoch": 1.0, "validation_mcc": 0.0, "validation_accuracy": 0.99},
                       {"epoch": 2.0, "validation_mcc": 0.01, "validation_accuracy": 0.5}])["epoch"] == 2.0


def test_training_stops_after_patience_epochs_without_a_better_one():
    log = [{"epoch": float(e), "validation_mcc": m, "validation_accuracy": 0.7}
           for e, m in enumerate([0.1, 0.3, 0.2, 0.25, 0.3], 1)]
    assert not should_stop(log[:4], 3)
    assert should_stop(log, 3)  # epochs 3, 4 and 5 (a tie that is not better) after the best, epoch 2
    assert not should_stop(log, None) and not should_stop(log, 4)


def test_patience_counts_only_once_the_run_has_left_the_majority_class():
    plateau = [{"epoch": float(e), "validation_mcc": 0.0, "validation_accuracy": 0.676} for e in range(1, 8)]
    assert not should_stop(plateau, 3)  # 7 epochs at MCC 0: only the cap ends it
    left = plateau + [{"epoch": 8.0, "validation_mcc": 0.2, "validation_accuracy": 0.7}]
    assert not should_stop(left, 3)
    flat = [{"epoch": float(e), "validation_mcc": 0.1, "validation_accuracy": 0.7} for e in range(9, 12)]
    assert should_stop(left + flat, 3)  # 3 epochs after the best (epoch 8), none better


def test_keep_best_stops_the_trainer_and_keeps_the_rule_s_epoch():
    from types import SimpleNamespace

    import torch

    from lab.training import KeepBest

    model, keep = torch.nn.Linear(2, 2), KeepBest("eval_validation_mcc", patience=2)
    stops = []
    for epoch, (mcc, acc) in enumerate([(0.2, 0.7), (0.2, 0.8), (0.1, 0.9), (0.15, 0.9)], 1):
        control = SimpleNamespace(should_training_stop=False, should_save=True)
        keep.on_evaluate(SimpleNamespace(num_train_epochs=40), SimpleNamespace(epoch=float(epoch)), control,
                         model=model, metrics={"eval_validation_mcc": mcc, "eval_validation_accuracy": acc})
        stops.append((control.should_training_stop, control.should_save))
    assert keep.best_epoch == 2.0  # the epoch that stops training is not checkpointed: nothing would be left to do
    assert stops == [(False, True), (False, True), (False, True), (True, False)]


def test_the_plan_runs_the_head_check_first_and_never_reports_the_tuning_seed():
    empty = sr.plan([])
    assert {s["part"] for s in empty if sr.ready(s)} == {"head"}
    assert {(s["head"], s["seed"]) for s in empty if s["part"] == "head"} == {(h, s) for h in ("cls", "mean")
                                                                              for s in (1, 2, 3)}
    grid = [s for s in empty if s["part"] == "grid"]
    assert len(grid) == 3 * len(HEADLINE) and {s["seed"] for s in grid} == {0}
    seeds = {m: sorted(s["seed"] for s in empty if s["part"] == "seeds" and s["method"] == m) for m in HEADLINE}
    assert seeds == {m: list(range(1, METHODS[m].seeds + 1)) for m in HEADLINE}
    assert seeds["bitfit"] == seeds["full"] == seeds["lora"] == [1, 2, 3, 4, 5]


def test_the_head_is_chosen_on_mean_validation_mcc_only():
    runs = [_run("head", "bitfit", "cls", 1e-3, s, [(0.5, 0.8, 0.99)]) for s in (1, 2, 3)]
    assert sr.choose_head(runs) is None  # incomplete
    runs += [_run("head", "bitfit", "mean", 1e-3, s, [(0.52, 0.7, 0.1)]) for s in (1, 2, 3)]
    assert sr.choose_head(runs) == "mean"  # dev says otherwise; it is not read
    planned = sr.plan(runs)
    assert all(s["head"] == "mean" for s in planned if s["part"] == "grid") and all(
        sr.ready(s) for s in planned if s["part"] == "grid")
    tie = [dict(r, head="mean") if r["head"] == "mean" else r for r in runs[:3]] + [
        _run("head", "bitfit", "mean", 1e-3, s, [(0.5, 0.8, 0.5)]) for s in (1, 2, 3)]
    assert sr.choose_head(tie) == "cls"  # a tie keeps the architecture's own head


def _complete_study(head="mean"):
    runs = [_run("head", "bitfit", h, 1e-3, s, [(0.5 if h == head else 0.4, 0.8, 0.8)])
            for h in ("cls", "mean") for s in (1, 2, 3)]
    for method in HEADLINE:
        for lr in METHODS[method].lrs:
            runs.append(_run("grid", method, head, lr, 0, [(0.3 + (lr == METHODS[method].lrs[1]) * 0.1, 0.8, 0.8)]))
    full_logs = {1: [(0.3, 0.72, 0.8), (0.5, 0.80, 0.81)], 2: [(0.3, 0.73, 0.79), (0.5, 0.79, 0.8)]}
    bitfit_logs = {1: [(0.0, 0.67, 0.7), (0.2, 0.74, 0.72), (0.5, 0.80, 0.8)], 2: [(0.0, 0.67, 0.68)] * 3}
    for method in HEADLINE:
        lr = METHODS[method].lrs[1]
        for seed in range(1, METHODS[method].seeds + 1):
            log = {"full": full_logs, "bitfit": bitfit_logs}.get(method, {}).get(seed, [(0.4, 0.78, 0.77)])
            runs.append(_run("seeds", method, head, lr, seed, log))
    runs += [_run("cost", m, head, METHODS[m].lrs[1], 1, [(0.1, 0.7, 0.7)] * 2) for m in ("bitfit", "full")]
    return runs


def test_report_writes_every_table_and_counts_a_seed_that_never_reaches(tmp_path):
    runs = _complete_study()
    (tmp_path / "runs").mkdir()
    for r in runs:
        (tmp_path / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    rp.report(tmp_path)
    for name in ("runs.csv", "head.md", "grid.md", "methods.md", "tta.md", "methods.png"):
        assert (tmp_path / name).is_file(), name
    methods = (tmp_path / "methods.md").read_text()
    assert "last_epochs" in methods and "kept_at_cap" in methods
    grid = (tmp_path / "grid.md").read_text()
    assert "dev" not in grid.lower()  # what chose the rate is validation only
    rows, targets = rp.tta_rows(runs, sr.choose_lrs(runs, "mean"))
    assert targets["majority_plus_5"] == pytest.approx(0.72)
    bitfit = {r["seed"]: r for r in rows if r["method"] == "bitfit"}
    assert bitfit[1]["majority_plus_5_epochs"] == 2 and bitfit[2]["majority_plus_5_epochs"] is None
    assert bitfit[2]["majority_plus_5_seconds"] == math.inf  # counted as never, not dropped
    ratios = rp.tta_ratios(rows, "majority_plus_5")
    assert ratios["bitfit_never"] == 1 and ratios["max_ratio"] == math.inf
    assert "始終沒到的 seed：BitFit 1 個" in (tmp_path / "tta.md").read_text()
    # each BitFit seed against Full FT's median seed, not paired by seed number
    fake = [{"method": "bitfit", "t_seconds": s} for s in (10.0, 30.0, 20.0)] + \
           [{"method": "full", "t_seconds": s} for s in (40.0, 5.0, 10.0)]
    assert rp.tta_ratios(fake, "t") == {"median_ratio": 2.0, "min_ratio": 1.0, "max_ratio": 3.0,
                                        "bitfit_never": 0, "full_never": 0}
    # seed 0 (the grid's) is not among the reported seeds
    table = rp.method_table(runs, sr.choose_lrs(runs, "mean"))
    assert table.loc["bitfit", "seeds"] == 5 and table.loc["frozen", "seeds"] == 3


def test_other_tasks_get_their_own_metric_and_02_gets_the_recipe(tmp_path):
    runs = _complete_study()
    chosen = sr.choose_lrs(runs, "mean")
    for seed, mcc in ((1, 0.40), (2, 0.50), (3, 0.60)):  # CoLA: scored by MCC, no F1 in its log
        r = _run("task", "bitfit", "mean", chosen["bitfit"], seed, [(0.3, 0.7, 0.7)], task="cola")
        r["name"] = "cola-" + r["name"]
        for e in r["log"]:
            del e["validation_f1"], e["dev_f1"]
            e["dev_mcc"] = mcc
        runs.append(r)
    sst2 = _run("task", "bitfit", "mean", chosen["bitfit"], 1, [(0.3, 0.7, 0.7)], task="sst2")
    sst2["name"] = "sst2-" + sst2["name"]
    runs.append(sst2)  # a run file's name sorts CoLA first; the table keeps the lab's order
    (tmp_path / "runs").mkdir()
    for r in runs:
        (tmp_path / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    rp.report(tmp_path)
    tasks = rp.task_table(runs, chosen)
    assert list(dict.fromkeys(tasks.index)) == ["mrpc", "sst2", "cola"]
    cola = tasks.loc["cola"]
    assert cola["metric"] == "dev mcc" and cola["mean"] == pytest.approx(0.5) and cola["per_seed"] == "0.400 0.500 0.600"
    assert set(tasks.loc["mrpc", "method"]) == {"bitfit", "full"}
    shown = (tmp_path / "tasks.md").read_text()  # each row's mean and std with its metric's decimals
    assert "| cola | bitfit | dev mcc |" in shown and "| 0.500 | 0.100 | 0.400 0.500 0.600 |" in shown
    mrpc = tasks.loc["mrpc"].set_index("method").loc["bitfit"]
    assert f"| {mrpc['mean']:.1f} | {mrpc['std']:.1f} | {mrpc['per_seed']} |" in shown
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["head"] == "mean" and recipe["patience"] == sr.PATIENCE and recipe["max_epochs"] == sr.MAX_EPOCHS
    bitfit = recipe["methods"]["bitfit"]
    assert bitfit["lr"] == chosen["bitfit"] and [s["seed"] for s in bitfit["seeds"]] == [1, 2, 3, 4, 5]
    assert "cola" not in (tmp_path / "methods.md").read_text()  # MRPC's tables hold MRPC's runs only


@pytest.mark.slow
def test_the_quick_study_runs_end_to_end(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    if not os.environ.get("BITFIT_DATA_DIR"):
        pytest.skip("needs the local MRPC folder (BITFIT_DATA_DIR)")
    out = tmp_path / "study"
    subprocess.run([sys.executable, "-m", "study.run", "--quick", "--out", str(out), "--jobs", "1"], cwd=ROOT,
                   check=True, capture_output=True)
    runs = sr.read_runs(out)
    assert {r["part"] for r in runs} == {"head", "grid", "seeds", "task", "cost"}
    assert {r["task"] for r in runs if r["part"] == "task"} == {"sst2", "cola"}
    assert {p.name for p in (out / "packs").glob("*task-bitfit*.safetensors")} == {
        f"{r['name']}.safetensors" for r in runs if r["part"] == "task"}  # one BitFit pack per task run
    assert all(r["protocol"] == 3 and r["precision"] == "float32" for r in runs)
    assert {r["seed"] for r in runs if r["part"] == "seeds"} == {1}
    assert all(len(r["pieces"]) == 1 and r["pieces"][0]["from_epoch"] == 0.0 for r in runs)  # none was resumed
    assert not any((out / "partial").iterdir())  # a finished run's checkpoints are gone
    rp.report(out)
    assert (out / "methods.md").is_file() and (out / "tasks.md").is_file() and (out / "recipe.json").is_file()


def test_a_run_an_older_cap_cut_short_is_redone_and_its_time_still_counts(tmp_path):
    climbing = [(0.1 * i, 0.7, 0.7) for i in range(1, 21)]  # still improving at epoch 20
    cut = _run("seeds", "bitfit", "cls", 3e-4, 1, climbing, max_epochs=20)
    near = _run("grid", "beft", "cls", 3e-4, 0, climbing[:18] + [(0.1, 0.7, 0.7)] * 2, max_epochs=20)  # 2 < PATIENCE
    stopped = _run("seeds", "bitfit", "cls", 3e-4, 2, climbing[:12] + [(0.1, 0.7, 0.7)] * 3, max_epochs=20)
    cost = _run("cost", "bitfit", "cls", 3e-4, 1, climbing[:2], max_epochs=2)
    assert [sr.cut_by_cap(r) for r in (cut, near, stopped, cost)] == [True, True, False, False]
    assert not sr.cut_by_cap({**cut, "max_epochs": sr.MAX_EPOCHS, "last_epoch": sr.MAX_EPOCHS})  # the cap in force
    (tmp_path / "runs").mkdir()
    for r in (cut, near, stopped, cost):
        (tmp_path / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    assert [r["name"] for r in sr.read_runs(tmp_path)] == sorted([stopped["name"], cost["name"]])
    sr.retire_cut_runs(tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs" / "retired").iterdir()) == sorted(
        [f"{cut['name']}.json", f"{near['name']}.json"])
    assert sum(sr.spent_hours(tmp_path).values()) == pytest.approx(60.0 * (20 + 20 + 15 + 2) / 2 / 3600)
    assert {r["name"] for r in sr.retired_runs(tmp_path)} == {cut["name"], near["name"]}


def test_a_resumed_run_keeps_its_earlier_pieces_and_a_changed_setting_starts_it_again(tmp_path):
    from safetensors.torch import save_file

    from lab.training import KEPT_FILE

    settings = {"name": "seeds-bitfit-cls-lr0.0003-s1", "lr": 3e-4, "max_epochs": sr.MAX_EPOCHS, "warmup_steps": 52}
    assert [p["from_epoch"] for p in sr.start_piece(tmp_path, settings, 2)] == [0.0]  # nothing to resume: one piece
    earlier = [{"commit": "abc", "from_epoch": 0.0, "to_epoch": 7.0, "wall_seconds": 1200.0, "threads": 1,
                "concurrent_runs": 2}]
    (tmp_path / "pieces.json").write_text(json.dumps(earlier))
    (tmp_path / "checkpoint-728").mkdir()
    save_file({}, tmp_path / "checkpoint-728" / KEPT_FILE)
    pieces = sr.start_piece(tmp_path, settings, 1)
    assert pieces[:1] == earlier and pieces[1]["concurrent_runs"] == 1 and len(pieces) == 2
    assert (tmp_path / "checkpoint-728").is_dir()
    run = {"wall_seconds": 1200.0 + 900.0, "concurrent_runs": 1,
           "pieces": earlier + [{**pieces[1], "wall_seconds": 900.0}]}
    assert sr.machine_seconds(run) == pytest.approx(1200.0 / 2 + 900.0)  # each piece with its own neighbours
    assert sr.machine_seconds({"wall_seconds": 600.0, "concurrent_runs": 2}) == 300.0  # runs without pieces
    assert len(sr.start_piece(tmp_path, {**settings, "max_epochs": 80}, 1)) == 1  # other settings: start again
    assert not (tmp_path / "checkpoint-728").exists()
    (tmp_path / "checkpoint-728").mkdir()
    save_file({}, tmp_path / "checkpoint-728" / KEPT_FILE)
    (tmp_path / "settings.json").unlink()
    assert len(sr.start_piece(tmp_path, settings, 1)) == 1 and not (tmp_path / "checkpoint-728").exists()  # unknown


def test_the_plan_prices_a_method_by_its_retired_runs_until_one_counts(tmp_path, capsys):
    climbing = [(0.1 * i, 0.7, 0.7) for i in range(1, 21)]
    cut = _run("grid", "beft_all", "cls", 3e-4, 0, climbing, max_epochs=20)  # 20 epochs in 1200 s, 2 runs at a time
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{cut['name']}.json").write_text(json.dumps(cut))
    sr.show_plan(tmp_path, quick=False)
    out = capsys.readouterr().out
    assert "beft_all 30 s" in out  # 1200 s / 2 runs sharing the CPU / 20 epochs
    # no counted run of BEFT-all yet: its epochs are guessed, at the retired run's price per epoch
    assert f"seeds-beft_all-?-lr?-s1                    ~{30 * sr.EPOCHS_DEFAULT / 60:5.1f} machine-min" in out


def test_the_plan_prices_a_run_by_the_epochs_its_rate_took():
    fast = _run("grid", "bitfit", "cls", 1e-3, 0, [(0.1 * i, 0.7, 0.7) for i in range(1, 5)])
    slow = _run("grid", "bitfit", "cls", 3e-4, 0, [(0.05 * i, 0.7, 0.7) for i in range(1, 17)])
    runs = [fast, slow]
    by_method = sr.epochs_run(runs)
    assert sr.epochs_expected({"part": "seeds", "method": "bitfit", "lr": 3e-4}, runs, by_method) == 16
    assert sr.epochs_expected({"part": "seeds", "method": "bitfit", "lr": 1e-3}, runs, by_method) == 4
    assert sr.epochs_expected({"part": "seeds", "method": "bitfit", "lr": 3e-3}, runs, by_method) == 10  # the mean
    assert sr.epochs_expected({"part": "cost", "method": "bitfit", "lr": 3e-4}, runs, by_method) == sr.COST_EPOCHS
