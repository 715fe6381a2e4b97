"""lab.notebook_sync: the notebooks' setup cells and the Colab badges agree with REPO_URL and follow it."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from lab import notebook_sync as ns
from lab import setup as installer


def _read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _source(cell):
    return "".join(cell["source"])


# --- generated badges and setup cells agree with REPO_URL --------------------------------------


def test_notebooks_and_readme_agree_with_repo_url():
    assert ns.sync(ROOT, write=False) == [], "run: python -m lab.notebook_sync --sync"
    for name in ns.NOTEBOOKS:
        cells = _read(ROOT / name)["cells"]
        assert ns.colab_badge(name) in _source(cells[0])
        code = [c for c in cells if c["cell_type"] == "code"]
        assert _source(code[0]) == ns.setup_cell_source() and cells[1] is code[0]
        assert _source(code[1]).startswith("# Run settings:")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ns.readme_block() in readme
    for path in re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/([^)\s]+)", readme):
        assert (ROOT / path).is_file(), path


def test_changing_repo_url_is_one_edit_and_one_command(tmp_path, monkeypatch):
    project = tmp_path / "lab"
    project.mkdir()
    for name in (*ns.NOTEBOOKS, "README.md"):
        shutil.copy(ROOT / name, project / name)
    monkeypatch.setattr(installer, "REPO_URL", "https://github.com/someone/other-lab")
    assert ns.sync(project, write=False) == [*ns.NOTEBOOKS, "README.md"]
    assert ns.sync(project) == [*ns.NOTEBOOKS, "README.md"]
    assert ns.sync(project, write=False) == []
    for name in ns.NOTEBOOKS:
        old, new = _read(ROOT / name), _read(project / name)
        nbformat.validate(nbformat.reads(json.dumps(new), as_version=4))
        assert f"github/someone/other-lab/blob/main/{name})" in _source(new["cells"][0])
        assert 'REPO_URL = "https://github.com/someone/other-lab"' in _source(new["cells"][1])
        assert 'Path.cwd() / "other-lab"' in _source(new["cells"][1])
        assert new["cells"][2:] == old["cells"][2:] and new["metadata"] == old["metadata"]
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert "bitfit-lab/bitfit-lab/blob" not in readme and readme.count("someone/other-lab/blob/main/") == 3


def test_sync_inserts_the_setup_cell_once_and_adds_the_badge_under_the_title():
    nb = {"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": ["# Exercise 1\n", "\n", "Text"]},
                    {"cell_type": "code", "id": "s", "metadata": {}, "execution_count": 3, "outputs": [],
                     "source": ["# Run settings: x\n"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    ns.sync_notebook(nb, "solutions/ex1.ipynb")
    ns.sync_notebook(nb, "solutions/ex1.ipynb")
    cells = nb["cells"]
    assert [c["id"] for c in cells][::2] == ["t", "s"] and len(cells) == 3
    assert _source(cells[0]) == f"# Exercise 1\n\n{ns.colab_badge('solutions/ex1.ipynb')}\n\nText"
    assert "blob/main/solutions/ex1.ipynb" in _source(cells[0])
    assert cells[1]["execution_count"] is None and cells[1]["outputs"] == []
    assert _source(cells[1]) == ns.setup_cell_source()
    nbformat.validate(nbformat.from_dict(nb))


def test_a_changed_setup_cell_loses_its_stale_outputs():
    nb = {"cells": [{"cell_type": "code", "id": "a", "metadata": {}, "execution_count": 1,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "old"}],
                     "source": ["# Setup: old version\n"]}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    ns.sync_notebook(nb, "x.ipynb")
    assert len(nb["cells"]) == 1 and nb["cells"][0]["outputs"] == [] and nb["cells"][0]["execution_count"] is None


def test_repo_url_must_be_a_github_address_for_badges():
    with pytest.raises(ValueError, match="https://github.com/owner/name"):
        ns.colab_badge("01-Setup.ipynb", repo_url="https://gitlab.com/a/b")
    assert ns.github_path("https://github.com/a/b.git") == "a/b"
