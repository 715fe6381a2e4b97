"""The comparison study: trainable counts are exactly as claimed, and --quick runs end to end."""

import json
import subprocess
import sys

import pytest

sys.path.insert(0, str(__import__("conftest").ROOT / "benchmarks"))
import compare_methods as cm  # noqa: E402

import bitfit_utils as bu  # noqa: E402
from conftest import ROOT, tiny_bert  # noqa: E402


def counts():
    return {m: cm.setup(tiny_bert(), m, seed=0)[1] for m in cm.METHODS}


def test_trainable_counts_are_exactly_as_expected():
    c = counts()
    bitfit = bu.apply_bitfit(tiny_bert()).trainable
    head = 16 * 2 + 2
    assert c["bitfit"] == c["adaptive_init"] == c["random"] == bitfit
    assert c["frozen"] == head
    assert c["full"] == bu.count_parameters(tiny_bert())[1]
    layer_norms = 2 * 16 * 2 + 16  # two LayerNorms per layer, plus the embeddings'
    assert c["bitfit_ln"] == bitfit + layer_norms
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
    cm.setup(model, "adaptive_init", seed=0)
    after = model.bert.encoder.layer[0].intermediate.dense.bias
    assert not (before == after).any()


def test_random_baseline_touches_only_masked_entries():
    model, n = cm.setup(tiny_bert(), "random", seed=1)
    assert n == bu.apply_bitfit(tiny_bert()).trainable


def test_quick_study_runs_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/compare_methods.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    main = [r for r in runs if r["part"] == "main"]
    assert {r["method"] for r in main} == set(cm.METHODS) and len(main) == len(cm.METHODS)
    # a train-size point gets the full-data run's step budget: 64 quick pairs = 2 steps, half of them = 1 step x 2
    (curve,) = [r for r in runs if r["part"] == "curve"]
    (bitfit,) = [r for r in main if r["method"] == "bitfit"]
    assert (curve["train_pairs"], bitfit["train_pairs"]) == (32, 64)
    assert curve["steps"] == bitfit["steps"] == 2
    assert (tmp_path / "curve.csv").exists()
    assert all(0 <= r["dev_f1"] <= 100 and r["checkpoint_bytes"] > 0 for r in runs)
    assert (tmp_path / "methods.md").read_text().count("\n") == len(cm.METHODS) + 2
    assert (tmp_path / "methods.png").stat().st_size > 0
    # resumable: a second call finds every run done and trains nothing
    again = subprocess.run([sys.executable, "benchmarks/compare_methods.py", "--quick", "--out", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "run " not in again.stdout


def test_report_keeps_devices_apart(tmp_path):
    """Times and RSS come only from CPU runs made one at a time; GPU runs add CUDA memory and their device."""
    (tmp_path / "runs").mkdir()
    base = {"part": "main", "fraction": 1.0, "lr": 1e-3, "epochs": 7, "trainable": 10, "total": 100,
            "trainable_pct": 10.0, "checkpoint_bytes": 1000, "train_s_per_epoch": 2.0, "peak_rss_mib": 500.0,
            "dev_accuracy": 80.0, "dev_f1": 85.0}
    for seed in (0, 1):  # written before the device fields existed: CPU, one run at a time
        run = {**base, "method": "bitfit", "seed": seed, "name": f"main-bitfit-s{seed}", "cuda_max_allocated_mib": None}
        (tmp_path / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
    (tmp_path / "curve.csv").write_text("left over from runs that were deleted\n")
    cm.report(tmp_path)
    assert "cuda_max_mib" not in (tmp_path / "methods.csv").read_text()
    assert not (tmp_path / "curve.csv").exists()  # no curve runs: no curve table
    gpu = {"device": "NVIDIA H100 80GB HBM3", "concurrent_runs": 8, "peak_rss_mib": 9000.0}
    for method, seed, seconds in (("full", 0, 60.0), ("bitfit", 2, 50.0)):
        run = {**base, **gpu, "method": method, "seed": seed, "name": f"main-{method}-s{seed}",
               "train_s_per_epoch": seconds, "cuda_max_allocated_mib": 1234.0}
        (tmp_path / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
    cm.report(tmp_path)
    import pandas as pd

    table = pd.read_csv(tmp_path / "methods.csv", index_col="method")
    assert list(table.index) == ["bitfit", "full"]  # the order of METHODS
    assert table.loc["full", "cuda_max_mib"] == 1234.0 and table.loc["bitfit", "f1_std"] == 0.0
    assert pd.isna(table.loc["full", "s_per_epoch"])
    # the GPU run shared its machine: its 50 s and its RSS stay out; its F1 counts
    assert table.loc["bitfit", "s_per_epoch"] == 2.0 and table.loc["bitfit", "peak_rss_mib"] == 500.0
    assert "gpu_s_per_epoch" not in table.columns
    assert table.loc["bitfit", "seeds"] == 3 and table.loc["bitfit", "devices"] == "cpu x2, NVIDIA H100 80GB HBM3 x1"


def test_markdown_keeps_declared_decimals():
    import pandas as pd

    table = pd.DataFrame({"trainable": [26882], "f1_mean": [84.0], "f1_std": [float("nan")]},
                         index=pd.Index(["full"], name="method"))
    text = cm.markdown(table, {"f1_mean": 1, "f1_std": 1})
    assert text.splitlines()[2] == "| full | 26,882 | 84.0 | – |"


def test_readme_agrees_with_committed_results():
    import update_readme

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert update_readme.render(readme, ROOT / "results") == readme, "run python benchmarks/update_readme.py"
