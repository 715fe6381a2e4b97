"""Clean outputs: committed notebooks and results show no machine's paths and no progress-bar debris.

Notebooks: what a machine wrote (cell outputs and metadata) is checked; the cells' sources are the
authors' and are not. Results: every committed text file under ``results/``.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

#: An absolute path of some machine: home and working folders, temporary folders, installs (site-packages).
MACHINE_PATH = re.compile(
    r"(?<![\w.:/-])(?:/root|/home|/tmp|/work|/opt|/mnt|/Users|/var/folders|/private/var|/usr/local|/usr/lib"
    r"|/content)/|[A-Za-z]:\\{1,2}Users\\|site-packages"
)
#: What progress bars leave: tqdm's "  40%|####      | 4/10 [00:01<00:02, 3.1it/s]", "it/s]", transformers' bar.
PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+\s*\[|[ks]?it/s\]|s/it\]|Writing model shards")


def committed(pattern: str) -> list[Path]:
    """Committed files matching a git pathspec (all matching files when this is not a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", pattern], cwd=ROOT, capture_output=True, check=True)
        return [ROOT / p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in ROOT.glob(pattern.replace(":(glob)", "")) if p.is_file())


NOTEBOOKS = sorted({*ROOT.glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")})


def results_text_files() -> list[Path]:
    files = []
    for path in sorted(committed(":(glob)results/**")):
        data = path.read_bytes()
        try:
            if b"\0" not in data:
                data.decode("utf-8")
                files.append(path)
        except UnicodeDecodeError:
            pass  # a picture
    return files


def output_texts(output: dict) -> list[str]:
    """Every text an output carries: a stream's text, a result's plain text and HTML, a traceback."""
    texts = ["".join(output.get("text", ""))] if "text" in output else []
    texts += ["".join(v) if isinstance(v, list) else str(v) for k, v in output.get("data", {}).items()
              if k.startswith("text/")]
    texts += ["\n".join(output.get("traceback", []))]
    return [t for t in texts if t]


def notebook_problems(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    if m := MACHINE_PATH.search(json.dumps(notebook.get("metadata", {}))):
        problems.append(f"metadata: machine path {m.group(0)!r}")
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    for number, cell in enumerate(code_cells, 1):
        where = f"code cell {number} ({''.join(cell['source']).splitlines()[0][:50] if cell['source'] else ''!r})"
        for k, output in enumerate(cell.get("outputs", []), 1):
            at = f"{where}, output {k}"
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}) and not output_texts(output):
                problems.append(f"{at}: a widget (tqdm draws its bars as one) with no text")
            for text in output_texts(output):
                if m := MACHINE_PATH.search(text):
                    problems.append(f"{at}: machine path {text[max(0, m.start() - 30):m.end() + 30]!r}")
                if output.get("output_type") == "stream" and "\r" in text:
                    problems.append(f"{at}: carriage return in {output.get('name')} (a redrawn progress bar)")
                if m := PROGRESS_BAR.search(text):
                    problems.append(f"{at}: progress bar {text[max(0, m.start() - 30):m.end() + 10]!r}")
    return list(dict.fromkeys(problems))  # an output's text/plain and text/html may say the same


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_outputs_are_clean(path):
    problems = notebook_problems(path)
    assert not problems, f"{path.name}: {len(problems)} problem(s):\n" + "\n".join(problems)


def test_results_text_files_are_clean():
    files = results_text_files()
    assert any(p.name == "bench_gpu_h200.txt" for p in files)
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if m := MACHINE_PATH.search(line):
                problems.append(f"{where}: machine path {line[max(0, m.start() - 30):m.end() + 30]!r}")
            if "\r" in line.rstrip("\r"):
                problems.append(f"{where}: carriage return inside a line (a redrawn progress bar)")
            if m := PROGRESS_BAR.search(line):
                problems.append(f"{where}: progress bar {line[max(0, m.start() - 30):m.end() + 10]!r}")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The patterns find a profiler warning's path, a tqdm bar and a redrawn stream; not URLs or plain numbers."""
    assert MACHINE_PATH.search("/opt/torch/.venv/lib/python3.12/site-packages/torch/profiler/profiler.py:224")
    assert MACHINE_PATH.search("saved to /home/alice/packs") and MACHINE_PATH.search(r"C:\Users\bob\lab")
    assert not MACHINE_PATH.search("https://huggingface.co/home/x and results/runs/a.json, 1/2, 0.5/1")
    assert PROGRESS_BAR.search("Map: 100%|##########| 3668/3668 [00:00<00:00, 12345.6 examples/s]")
    assert PROGRESS_BAR.search("  0%|          | 0/1 [00:00<?, ?it/s]")
    assert not PROGRESS_BAR.search("accuracy 85.3 %, 3,668 pairs | F1 0.88")
    notebook = {"metadata": {}, "cells": [{"cell_type": "code", "source": ["trainer.train()"], "outputs": [
        {"output_type": "stream", "name": "stderr", "text": ["step 1\rstep 2\n"]},
        {"output_type": "display_data", "data": {"text/plain": ["Writing model shards: 100%"]}, "metadata": {}}]}]}
    (tmp_path / "n.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    problems = notebook_problems(tmp_path / "n.ipynb")
    assert len(problems) == 2 and "carriage return" in problems[0] and "progress bar" in problems[1]


def test_the_labs_own_steps_draw_no_progress_bar(tokenizer, capfd):
    """Tokenizing draws no bar that would stay behind in a notebook's outputs (nor does full_model_size_mb:
    tests/test_analysis.py)."""
    import datasets

    from lab.data import tokenize_pairs

    pairs = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"sentence1": ["the cat"] * 4, "sentence2": ["a cat"] * 4, "label": [0, 1] * 2, "idx": list(range(4))})})
    encoded = tokenize_pairs(pairs, tokenizer)
    assert encoded["train"].column_names == ["label", "input_ids", "token_type_ids", "attention_mask"]
    out, err = capfd.readouterr()
    assert not PROGRESS_BAR.search(out + err) and "\r" not in out + err
    assert datasets.is_progress_bar_enabled()  # put back as it was
