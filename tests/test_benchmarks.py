"""The benchmark script runs and reports every measurement (no timing asserts); its memory probe is this process's own."""

import pytest

import json
import subprocess
import sys

import torch

from study.tools import peak_rss
from conftest import ROOT


@pytest.mark.slow
def test_bench_quick_reports_everything(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_bitfit.py", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("ratio BitFit / full FT", "training memory above loaded model", "memory a step keeps",
                 "without dropout, BitFit", "without dropout, memory", "BitFit saves", "plain-PyTorch", "inference BitFit / base",
                 "pack switch", "pack / full checkpoint bytes"):
        assert line in proc.stdout
    result = json.loads(out.read_text())["shapes"]["minilm"]
    assert set(result["step_ms"]) == {"full", "bitfit", "bitfit_qi", "plain"}
    assert set(result["step_ms_no_dropout"]) == {"full", "bitfit"}
    assert all(v > 0 for v in result["step_ms"].values())
    assert set(result["cpu_rss"]) == set(result["step_ms"])
    full, bitfit = result["cpu_rss"]["full"], result["cpu_rss"]["bitfit"]
    assert bitfit["optimizer"] < 0.01 * full["optimizer"] and bitfit["gradients"] < 0.01 * full["gradients"]
    assert 0 < bitfit["activations"] < full["activations"]  # no inputs saved for weight gradients
    # deterministic sizes: MiniLM pack = 26,882 fp32 values plus a small header
    assert 26_882 * 4 <= result["pack"]["pack_bytes"] < 0.002 * result["pack"]["full_bytes"]


def test_peak_rss_is_this_process_not_the_parent():
    """A child started by a big parent must not inherit the parent's peak (ru_maxrss does on Linux)."""
    big = torch.ones(300 * 2**20 // 4)  # the parent holds ~300 MiB more than the child will
    code = "from study.tools import peak_rss; print(peak_rss())"
    child = int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()[-1])
    assert peak_rss() - child > 200 * 2**20
    del big
    peak_rss(reset=True)
    before = peak_rss()
    grown = torch.ones(100 * 2**20 // 4)
    assert peak_rss() - before > 80 * 2**20
    del grown


def test_train_script_follows_02s_rule(tmp_path, monkeypatch, tokenizer, mrpc_dir):
    """The accelerate script trains on the lab's train split, keeps an epoch by validation MCC, reports dev."""
    from lab import packs
    from benchmarks import train_mrpc
    from conftest import tiny_bert

    monkeypatch.setattr(train_mrpc, "load_model", lambda name=None: (tiny_bert(max_position_embeddings=128), tokenizer))
    kept = train_mrpc.main(["--quick", "--epochs", "2", "--data-dir", str(mrpc_dir), "--out", str(tmp_path)])
    assert {"eval_validation_mcc", "eval_dev_accuracy", "eval_dev_f1"} <= set(kept.index)
    assert kept.name in (1.0, 2.0)
    _, meta = packs.read_bias_checkpoint(tmp_path / "mrpc_bitfit.safetensors")
    assert meta["user"]["dev_accuracy"] == float(kept["eval_dev_accuracy"])
