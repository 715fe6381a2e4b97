"""The generated parts of the notebooks and the README: the setup cell and the "Open in Colab" badges.

Every notebook (and every notebook in ``solutions/``) starts with a title cell carrying its badge
and the same setup cell (:func:`setup_cell_source`), which finds the project and calls
``lab.setup.ensure_ready``; the README lists the badges between two marker lines. All of it is
written from ``lab.setup.REPO_URL`` and ``REPO_BRANCH``::

    python -m lab.notebook_sync --sync     # rewrite badges and setup cells
    python -m lab.notebook_sync --check    # list what differs (a test runs the same check)
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Sequence

from lab import setup as installer

#: The branch the Colab badges open.
REPO_BRANCH = "main"
#: The lab's notebooks, in order; notebooks in SOLUTIONS_DIR get the same setup cell.
NOTEBOOKS = ("01-Setup.ipynb", "02-Train.ipynb", "03-Inference.ipynb")
SOLUTIONS_DIR = "solutions"
SETUP_MARKER = "# Setup:"
README_BEGIN = "<!-- colab-badges: written by `python -m lab.notebook_sync --sync` from lab.setup.REPO_URL -->"
README_END = "<!-- /colab-badges -->"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.M)


def github_path(repo_url: str | None = None) -> str:
    """``'https://github.com/owner/name'`` -> ``'owner/name'`` (Colab opens GitHub notebooks only)."""
    repo_url = repo_url or installer.REPO_URL
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url)
    if not match:
        raise ValueError(f"REPO_URL must look like https://github.com/owner/name, not {repo_url!r}")
    return f"{match.group(1)}/{match.group(2)}"


def colab_badge(notebook: str, repo_url: str | None = None, branch: str | None = None) -> str:
    """The markdown "Open in Colab" badge of a notebook (its path inside the repository)."""
    repo_url, branch = repo_url or installer.REPO_URL, branch or REPO_BRANCH
    target = f"https://colab.research.google.com/github/{github_path(repo_url)}/blob/{branch}/{notebook}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({target})"


def setup_cell_source(repo_url: str | None = None) -> str:
    """The first code cell of every notebook (the same in all of them); any git URL works."""
    repo_url = repo_url or installer.REPO_URL
    folder = re.sub(r"\.git$", "", repo_url.rstrip("/").rsplit("/", 1)[-1])
    return f'''{SETUP_MARKER} find the project folder (on Colab: clone it first), then install what this kernel lacks.
import os, subprocess, sys
from pathlib import Path

REPO_URL = "{repo_url}"
lab_root = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lab" / "setup.py").is_file()),
                Path.cwd() / "{folder}")
on_colab = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
if on_colab and not (lab_root / "lab" / "setup.py").is_file():
    clone = subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, str(lab_root)],
                           capture_output=True, text=True)
    print(clone.stderr or f"cloned {{REPO_URL}} into {{lab_root}}")
if not (lab_root / "lab" / "setup.py").is_file():
    raise FileNotFoundError(f"lab/setup.py is not in {{Path.cwd()}} or a folder above it: open this notebook "
                            f"in the project folder, or get the project first: git clone {{REPO_URL}}")
sys.path.insert(0, str(lab_root))
from lab import setup as lab_setup
lab_setup.ensure_ready(lab_root)'''


def readme_block(repo_url: str | None = None, branch: str | None = None) -> str:
    """The README's badge list, between README_BEGIN and README_END."""
    rows = [f"| `{nb}` | {colab_badge(nb, repo_url, branch)} |" for nb in NOTEBOOKS]
    return "\n".join([README_BEGIN, "| notebook | Colab |", "|---|---|", *rows, README_END])


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _new_cell_id(cells: Sequence[dict]) -> str:
    taken = {cell.get("id") for cell in cells}
    while (cell_id := uuid.uuid4().hex[:8]) in taken:
        pass
    return cell_id


def sync_notebook(nb: dict, notebook: str, repo_url: str | None = None, branch: str | None = None) -> dict:
    """The notebook with its badge (in the title cell) and its setup cell (right after it) current.

    ``notebook`` is the path inside the repository (the badge opens it). A setup cell whose
    source changes loses its outputs (they came from other code).
    """
    cells = nb["cells"]
    badge = colab_badge(notebook, repo_url, branch)
    if cells and cells[0]["cell_type"] == "markdown":
        title = "".join(cells[0]["source"])
        if _BADGE_LINE.search(title):
            title = _BADGE_LINE.sub(lambda _: badge, title, count=1)
        else:
            head, sep, tail = title.partition("\n")
            title = f"{head}\n\n{badge}\n" + (f"\n{tail.lstrip(chr(10))}" if tail.strip() else "")
        cells[0]["source"] = _lines(title)
    source = setup_cell_source(repo_url)
    at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0
    existing = next((i for i, cell in enumerate(cells) if cell["cell_type"] == "code"
                     and "".join(cell["source"]).startswith(SETUP_MARKER)), None)
    if existing is None:
        cells.insert(at, {"cell_type": "code", "execution_count": None, "id": _new_cell_id(cells),
                          "metadata": {}, "outputs": [], "source": _lines(source)})
    elif "".join(cells[existing]["source"]) != source:
        cells[existing].update(source=_lines(source), outputs=[], execution_count=None)
    return nb


def sync_readme(text: str, repo_url: str | None = None, branch: str | None = None) -> str:
    """The README with its badge block current (the block must be there already)."""
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no badge block: add the two lines {README_BEGIN} and {README_END}")
    return pattern.sub(lambda _: readme_block(repo_url, branch), text, count=1)


def sync(root: Path | str = Path(__file__).resolve().parents[1], write: bool = True) -> list[str]:
    """Bring badges and setup cells in line with REPO_URL; returns the files that were (would be) changed."""
    root = Path(root)
    changed = []
    paths = [root / nb for nb in NOTEBOOKS] + sorted((root / SOLUTIONS_DIR).glob("*.ipynb"))
    for path in paths:
        text = path.read_text(encoding="utf-8")
        nb = sync_notebook(json.loads(text), path.relative_to(root).as_posix())
        new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"  # as nbformat writes
        if new != text:
            changed.append(path.relative_to(root).as_posix())
            if write:
                path.write_text(new, encoding="utf-8")
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = sync_readme(text)
    if new != text:
        changed.append("README.md")
        if write:
            readme.write_text(new, encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sync", action="store_true", help="rewrite badges and setup cells from REPO_URL")
    group.add_argument("--check", action="store_true", help="list files whose badges/setup cells differ")
    args = parser.parse_args(argv)
    changed = sync(write=args.sync)
    verb = "rewrote" if args.sync else "out of date (run python -m lab.notebook_sync --sync)"
    print(f"{verb}: {', '.join(changed)}" if changed else "badges and setup cells match REPO_URL")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
