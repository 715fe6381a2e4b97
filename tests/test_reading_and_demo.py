"""The reading-time count and the demo timer's reading of an executed 02 (synthetic notebooks, no training)."""

import json

import pytest

from benchmarks import reading_time as rt
from benchmarks.time_demo import read_demo


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": [text]}


def _code(text, outputs=(), timing=None):
    return {"cell_type": "code", "metadata": {"execution": timing} if timing else {}, "source": [text],
            "outputs": list(outputs), "execution_count": None}


def test_reading_counts_characters_words_lines_and_outputs():
    md = rt.cell_reading(_md("## 1. 資料 [連結](https://example.org/x) `apply_bitfit` BitFit"))
    assert (md.cjk, md.words, md.code_lines) == (4, 3, 0)  # "1", apply_bitfit, BitFit; the link's address is not read
    code = rt.cell_reading(_code("import torch\n\nx = 1\nprint(x)\n"))
    assert (code.code_lines, code.outputs) == (3, 1)
    silent = rt.cell_reading(_code("x = 1\n"))
    assert silent.outputs == 0
    shown = rt.cell_reading(_code("x = f()\n", [{"output_type": "stream", "name": "stdout", "text": "1\n"}]))
    assert shown.outputs == 1  # printed inside a function: its stored output counts
    assert rt.Reading(cjk=255, words=228, code_lines=15, outputs=6).minutes == pytest.approx(4.0)


def test_sections_split_at_headings_and_the_path_leaves_out_what_is_marked_optional(tmp_path):
    cells = [_md("# title 標題"), _md("## 1. 一"), _code("a = 1"), _md("## 7. 選讀：研究"), _code("b = 2\nc = 3"),
             _md("### 研究細節"), _code("d = 4"), _md("## 練習"), _md("### 練習 1"), _code("e = 5"),
             _md("### 練習 2（選做）"), _code("f = 6\ng = 7")]
    for name in ("01-Setup.ipynb", "02-Train.ipynb", "03-Inference.ipynb"):
        (tmp_path / name).write_text(json.dumps({"cells": cells}), encoding="utf-8")
    titles = [t for t, _ in rt.sections(tmp_path / "02-Train.ipynb")]
    assert titles == ["top", "## 1. 一", "## 7. 選讀：研究", "## 7. 選讀：研究 › ### 研究細節", "## 練習",
                      "## 練習 › ### 練習 1", "## 練習 › ### 練習 2（選做）"]
    on_path = [t for nb, t, _ in rt.path_sections(tmp_path) if nb == "01-Setup.ipynb"]
    assert on_path == ["top", "## 1. 一", "## 練習", "## 練習 › ### 練習 1"]  # 選讀 with its subsection, 選做 left out
    seen = set()
    first, again = rt.sections(tmp_path / "01-Setup.ipynb", seen), rt.sections(tmp_path / "01-Setup.ipynb", seen)
    assert first[1][1].code_lines == 1 and again[1][1].code_lines == 0  # a cell met again is read once
    total, per_notebook = rt.student_path_minutes(tmp_path)
    assert per_notebook["01-Setup.ipynb"] > per_notebook["02-Train.ipynb"] > 0  # code read in 01 is not read again
    assert total == pytest.approx(sum(per_notebook.values()))
    # 01 on the path: code a, e; prose 標題 一 練習 練習 and the words title, 1, 1
    assert per_notebook["01-Setup.ipynb"] == pytest.approx(rt.Reading(cjk=7, words=3, code_lines=2).minutes)
    parts = rt.student_path_parts(tmp_path)
    assert parts["prose"] + parts["code lines"] + parts["outputs"] == pytest.approx(total)
    assert parts["exercises (## 練習)"] > 0


def test_read_demo_finds_bitfit_and_sums_section_times():
    line = ("BitFit, lr 1e-3, at most 4 epochs: kept epoch 4 (validation MCC 0.524). Dev at that epoch: accuracy 80.1, "
            "F1 86.0. 250 s on this cpu, evaluations included.\n")
    t = lambda a, b: {"iopub.execute_input": f"2026-12-01T08:00:{a:02d}.000Z", "shell.execute_reply": f"2026-12-01T08:00:{b:02d}.000Z"}
    majority = {"output_type": "stream", "name": "stdout", "text": "always 'equivalent' on dev: accuracy 68.4, F1 81.2\n"}
    nb = {"cells": [_code("setup", [majority], timing=t(0, 2)), _md("## 3. 訓練 BitFit"),
                    _code("train", [{"output_type": "stream", "name": "stdout", "text": line}], timing=t(2, 30))]}
    got = read_demo(nb)
    assert got["bitfit_dev_accuracy"] == 80.1 and got["bitfit_kept_epoch"] == 4.0 and got["bitfit_max_epochs"] == 4
    assert got["seconds_per_section"] == {"top": 2.0, "3. 訓練 BitFit": 28.0} and got["dev_majority_accuracy"] == 68.4
    assert got["precision"] == "float32"  # no precision line: the demo trained in float32
    note = {"output_type": "stream", "name": "stdout", "text": "DEMO precision: bf16 autocast instead of float32 (...)\n"}
    nb["cells"][0]["outputs"].append(note)
    assert read_demo(nb)["precision"] == "bf16 autocast"
    with pytest.raises(ValueError, match="no BitFit result"):
        read_demo({"cells": [_code("setup")]})


def test_readme_demo_block_comes_from_the_measurement_file(tmp_path):
    from study.pages import demo_block

    assert "benchmarks/time_demo.py" in demo_block(tmp_path)  # nothing measured yet: says how to measure
    (tmp_path / "demo_cpu.json").write_text(json.dumps({
        "date": "2026-12-01", "machine": "x86_64, 2 cores, cpu", "loadavg_1min_before": 0.1, "commit": "abcdef0123",
        "wall_seconds": 333.3, "bitfit_lr": "1e-3", "bitfit_max_epochs": 4, "bitfit_kept_epoch": 4.0,
        "bitfit_dev_accuracy": 79.66, "bitfit_dev_f1": 85.0, "dev_majority_accuracy": 68.4}), encoding="utf-8")
    text = demo_block(tmp_path)
    assert "**333 秒**" in text and "**79.7**" in text and "abcdef0" in text and "68.4" in text and "2 核 CPU，無 GPU" in text and "高出 11.3 分" in text
    assert "離開了多數類" in text and "（float32）" in text  # a measurement before the precision was recorded
    measured = json.loads((tmp_path / "demo_cpu.json").read_text(encoding="utf-8"))
    (tmp_path / "demo_cpu.json").write_text(json.dumps({**measured, "precision": "bf16 autocast"}), encoding="utf-8")
    assert "**333 秒**（bf16 autocast）" in demo_block(tmp_path)


def test_the_lab_student_path_with_03s_multi_task_section_fits_30_minutes():
    on_path = [(nb, title) for nb, title, _ in rt.path_sections()]
    assert any(nb == "03-Inference.ipynb" and "三個任務" in title for nb, title in on_path)  # serving is on the path
    total, per_notebook = rt.student_path_minutes()
    assert total <= 30, f"student path {total:.1f} min: {per_notebook}"
