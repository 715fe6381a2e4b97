"""Smoke test of the benchmark script: it runs and reports every measurement (no timing asserts)."""

import json
import subprocess
import sys

from conftest import ROOT


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
