"""Protocol 2's study: the registry's trainable counts are exactly as claimed; the rule, plan and report."""

import json

import pytest
import torch

import bitfit_utils as bu
from conftest import tiny_bert
from lab.registry import HEADLINE, METHODS, setup
from study import p2_protocol as p2
from study import p2_report


def counts():
    return {m: setup(tiny_bert(), m, seed=0)[1] for m in METHODS}


def test_trainable_counts_are_exactly_as_expected():
    c = counts()
    bitfit = bu.apply_bitfit(tiny_bert()).trainable
    head = 16 * 2 + 2
    assert c["bitfit"] == c["adaptive_init"] == c["random"] == bitfit
    assert c["frozen"] == head
    assert c["full"] == bu.count_parameters(tiny_bert())[1]
    assert c["bitfit_qi"] == 2 * 16 + 2 * 32 + head
    assert c["bitfit_lora"] > c["lora"]
    # the handout's class loses every bias and the head: it is LoRA (r=4) alone
    lora_r4_alone = 2 * 2 * 4 * (16 + 16)  # layers x (query, value) x r x (in + out)
    assert c["handout_bitfitlora"] == lora_r4_alone
    # BEFT: one vector per targeted Linear layer (value only by default; every attention/FFN one for beft_all)
    assert c["beft"] == 2 * 16 + head
    assert c["beft_all"] == 2 * (3 * 16 + 16 + 32 + 16) + head
    assert c["beft_all"] == bu.apply_bitfit(tiny_bert(), ["query", "key", "value", "attention_output",
                                                          "intermediate", "output"]).trainable


def test_adaptive_init_overwrites_pretrained_biases():
    model = tiny_bert()
    before = model.bert.encoder.layer[0].intermediate.dense.bias.detach().clone()
    setup(model, "adaptive_init", seed=0)
    after = model.bert.encoder.layer[0].intermediate.dense.bias
    assert not (before == after).any()


def test_random_baseline_moves_only_the_masked_entries_and_the_head():
    from lab.registry import random_parameter_mask

    model, n = setup(tiny_bert(), "random", seed=1)
    groups = bu.parameter_groups(model)
    head = sum(p.numel() for name, p in model.named_parameters() if groups[name] == "head")
    masks = random_parameter_mask(tiny_bert(), n - head, seed=1)  # the same draw setup made
    assert sum(int(m.sum()) for m in masks.values()) == n - head
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    torch.manual_seed(0)
    logits = model(input_ids=torch.randint(5, 120, (4, 10))).logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    moved = 0
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        if groups[name] == "head":
            assert changed.any(), f"the head ({name}) must train"
            continue
        allowed = masks.get(name, torch.zeros_like(changed))
        assert not (changed & ~allowed).any(), f"{name}: an entry outside the mask moved"
        if p.grad is not None:  # Adam moves every masked entry with a gradient (unseen tokens' rows have none)
            assert torch.equal(changed, allowed & (p.grad != 0)), name
        moved += int(changed.sum())
    assert moved > 0
    assert n == bu.apply_bitfit(tiny_bert()).trainable  # as many scalars as BitFit (the paper's baseline)


def _run(method, lr, seed, part, log, **extra):
    """A run file as run_one writes it, with a made-up per-epoch log [(val_mcc, val_acc, dev_acc), ...]."""
    return {"part": part, "method": method, "lr": lr, "seed": seed, "name": p2._name(part, method, lr, seed),
            "quick": False, "epochs": len(log), "trainable": 10, "total": 100, "trainable_pct": 10.0,
            "checkpoint_bytes": 1000, "device": "cpu", "concurrent_runs": 1, "wall_seconds": 60.0 * len(log),
            "validation_majority": 0.67, "dev_positive_share": 0.684,
            "log": [{"epoch": float(i + 1), "train_seconds": 50.0 * (i + 1), "validation_mcc": m,
                     "validation_accuracy": a, "validation_f1": 0.8, "dev_accuracy": d, "dev_f1": 0.8, "dev_mcc": 0.1}
                    for i, (m, a, d) in enumerate(log)]}


def test_selection_looks_at_validation_only():
    # epoch 2 is best on dev, epoch 1 on validation MCC: the rule keeps epoch 1
    run = _run("bitfit", 1e-3, 0, "grid", [(0.40, 0.75, 0.70), (0.30, 0.74, 0.90)])
    assert p2.kept(run)["epoch"] == 1.0
    # a majority-class epoch (MCC 0) never wins, however its F1 or accuracy look
    run = _run("bitfit", 1e-3, 0, "grid", [(0.0, 0.99, 0.99), (0.05, 0.60, 0.60)])
    assert p2.kept(run)["epoch"] == 2.0
    # the rate: best validation MCC at the kept epoch, whatever dev says
    grid = [_run("full", lr, 0, "grid", [(mcc, 0.7, dev)]) for lr, mcc, dev in
            ((2e-5, 0.2, 0.95), (5e-5, 0.5, 0.60), (1e-4, 0.4, 0.99))]
    assert p2.choose(grid) == {"full": 5e-5}
    assert "bitfit" not in p2.choose(grid[:2])  # an incomplete grid chooses nothing


def test_plan_waits_for_the_grid_then_fills_in_the_chosen_rate():
    empty = p2.plan([])
    grid = [s for s in empty if s["part"] == "grid"]
    assert len(grid) == sum(len(METHODS[m].lrs) for m in HEADLINE)
    assert all(len(METHODS[m].lrs) == 3 for m in HEADLINE)  # the same tuning effort for every method
    assert all(s["lr"] is None for s in empty if s["part"] != "grid")
    seeds = {m: 1 + sum(s["method"] == m and s["part"] == "seeds" for s in empty) for m in HEADLINE}
    assert seeds == {"frozen": 3, "bitfit": 5, "full": 5, "lora": 5, "beft": 3, "beft_all": 3}
    runs = [_run("bitfit", lr, 0, "grid", [(mcc, 0.7, 0.7)]) for lr, mcc in ((3e-4, 0.1), (1e-3, 0.3), (3e-3, 0.2))]
    planned = p2.plan(runs)
    assert {s["lr"] for s in planned if s["method"] in ("bitfit", "bitfit_qi", "random", "adaptive_init")
            and s["part"] != "grid"} == {1e-3}
    assert {s["lr"] for s in planned if s["method"] in ("lora", "bitfit_lora") and s["part"] != "grid"} == {None}


def test_time_to_accuracy_reads_the_per_epoch_log(tmp_path):
    full = _run("full", 5e-5, 0, "tta", [(0.3, 0.70, 0.7), (0.4, 0.80, 0.8)])
    bitfit = _run("bitfit", 1e-3, 0, "tta", [(0.0, 0.67, 0.7), (0.2, 0.73, 0.7), (0.4, 0.81, 0.8)])
    assert p2_report.time_to(bitfit, 0.72) == 100.0 and p2_report.time_to(full, 0.72) == 100.0
    assert p2_report.time_to(bitfit, 0.80) == 150.0
    assert p2_report.time_to(bitfit, 0.95) != p2_report.time_to(bitfit, 0.95)  # NaN: never reached
    (tmp_path / "runs").mkdir()
    for run in (full, bitfit):
        (tmp_path / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
    p2_report.report_tta([full, bitfit], tmp_path)
    text = (tmp_path / "tta.md").read_text()
    assert "majority_plus_5" in text and "full_ft_best" in text


def test_markdown_keeps_declared_decimals():
    import pandas as pd

    table = pd.DataFrame({"trainable": [26882], "f1_mean": [84.0], "f1_std": [float("nan")]},
                         index=pd.Index(["full"], name="method"))
    text = p2_report.markdown(table, {"f1_mean": 1, "f1_std": 1})
    assert text.splitlines()[2] == "| full | 26,882 | 84.0 | – |"


def test_machine_hours_share_the_wall_time_among_runs_side_by_side():
    runs = [{"device": "cpu", "wall_seconds": 7200.0, "concurrent_runs": 2},   # half of the CPU for two hours
            {"device": "cpu", "wall_seconds": 1800.0, "concurrent_runs": 1},   # all of it for half an hour
            {"device": "cuda", "wall_seconds": 360.0, "concurrent_runs": 4},
            {"device": "cpu", "wall_seconds": 9999.0, "concurrent_runs": 1, "quick": True}]  # a smoke test: not counted
    hours = p2.machine_hours(runs)
    assert hours["cpu"] == pytest.approx(1.5) and hours["cuda"] == pytest.approx(0.025) and set(hours) == {"cpu", "cuda"}
