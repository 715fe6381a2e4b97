"""How long the lab's student path takes to read: a word count turned into minutes.

The student path is 01, 02 without its section 7 (the comparison study and the handout's recipes, for the
curious and for instructors), and 03. Every cell of it is counted, code included; training and waiting
are not reading and are left out (02's section 0 prints those).

Rates (stated here, not measured on students):

* Chinese prose: 255 characters a minute, the mean silent reading speed for Chinese in the IReST study
  (Trauzettel-Klosinski & Dietz, Invest. Ophthalmol. Vis. Sci. 53(9), 2012).
* Latin-script words inside the prose (identifiers, English terms): 228 words a minute, IReST's English mean.
* Code: 4 seconds a non-blank line, an assumption for reading a short cell that calls the lab's functions.
* Output: 10 seconds for each code cell that shows a table, a plot or printed lines, to look at it (a cell
  counts when it has stored outputs or, not yet run, when its code prints, plots or ends in an expression).
* A code cell met again word for word (the setup cell that opens every notebook) is read once.

    python benchmarks/reading_time.py            # per notebook and section, and the path's total
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CJK_PER_MINUTE = 255
WORDS_PER_MINUTE = 228
SECONDS_PER_CODE_LINE = 4
SECONDS_PER_OUTPUT = 10

#: (notebook, sections left out of the student path); a section starts at a markdown "## " heading.
STUDENT_PATH = (("01-Setup.ipynb", ()), ("02-Train.ipynb", ("## 7.",)), ("03-Inference.ipynb", ()))

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class Reading:
    """What one stretch of a notebook asks a reader to read."""

    cjk: int = 0
    words: int = 0
    code_lines: int = 0
    outputs: int = 0

    def __add__(self, other: "Reading") -> "Reading":
        return Reading(self.cjk + other.cjk, self.words + other.words,
                       self.code_lines + other.code_lines, self.outputs + other.outputs)

    @property
    def minutes(self) -> float:
        return (self.cjk / CJK_PER_MINUTE + self.words / WORDS_PER_MINUTE
                + (self.code_lines * SECONDS_PER_CODE_LINE + self.outputs * SECONDS_PER_OUTPUT) / 60)


def cell_reading(cell: dict) -> Reading:
    """The counts of one notebook cell (markdown: characters and words; code: lines, and whether it shows output)."""
    text = "".join(cell["source"])
    if cell["cell_type"] == "markdown":
        text = re.sub(r"\(https?://[^)]*\)", "", text)  # a link's address is not read
        return Reading(cjk=len(_CJK.findall(text)), words=len(_WORD.findall(text)))
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    shows = bool(cell.get("outputs")) or "print(" in text or "display(" in text or "plot" in text or (bool(last) and not last.startswith(
        (" ", "#")) and "=" not in last.split("(")[0] and not last.startswith(("import ", "from ", "for ", "if ")))
    return Reading(code_lines=len(lines), outputs=int(shows))


def sections(notebook: Path, seen: set[str] | None = None) -> list[tuple[str, Reading]]:
    """The notebook split at its "## " headings (the part before the first one is "top"), each counted.

    ``seen`` holds the code cells read already (updated here): a cell in it counts nothing.
    """
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    seen = set() if seen is None else seen
    parts: list[tuple[str, Reading]] = [("top", Reading())]
    for cell in cells:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith("## "):
            parts.append((text.splitlines()[0], Reading()))
        if cell["cell_type"] == "code" and text in seen:
            continue
        if cell["cell_type"] == "code":
            seen.add(text)
        title, reading = parts[-1]
        parts[-1] = (title, reading + cell_reading(cell))
    return parts


def path_sections(root: Path = ROOT):
    """The student path's sections in reading order: ``(notebook, title, Reading)``; code met again counts nothing."""
    seen: set[str] = set()
    for name, left_out in STUDENT_PATH:
        for title, r in sections(root / name, seen):
            if not (left_out and title.startswith(left_out)):
                yield name, title, r


def student_path_minutes(root: Path = ROOT) -> tuple[float, dict[str, float]]:
    """Minutes to read the student path, and per notebook."""
    per_notebook = {name: 0.0 for name, _ in STUDENT_PATH}
    for name, _, r in path_sections(root):
        per_notebook[name] += r.minutes
    return sum(per_notebook.values()), per_notebook


def student_path_parts(root: Path = ROOT) -> dict[str, float]:
    """Minutes of the student path by kind: prose, code lines, outputs; and how many of them the exercises take."""
    parts = {"prose": 0.0, "code lines": 0.0, "outputs": 0.0, "exercises (## 練習)": 0.0}
    for _, title, r in path_sections(root):
        parts["prose"] += Reading(cjk=r.cjk, words=r.words).minutes
        parts["code lines"] += Reading(code_lines=r.code_lines).minutes
        parts["outputs"] += Reading(outputs=r.outputs).minutes
        parts["exercises (## 練習)"] += r.minutes if title.startswith("## 練習") else 0.0
    return parts


def main() -> int:
    seen: set[str] = set()
    for name, left_out in STUDENT_PATH:
        print(name)
        for title, r in sections(ROOT / name, seen):
            mark = "  (not on the student path)" if left_out and title.startswith(left_out) else ""
            print(f"  {r.minutes:5.1f} min  {r.cjk:5d} 字 {r.words:4d} words {r.code_lines:3d} code lines "
                  f"{r.outputs:2d} outputs  {title[:50]}{mark}")
    total, per_notebook = student_path_minutes()
    print("student path: " + " + ".join(f"{n} {m:.1f}" for n, m in per_notebook.items()) + f" = {total:.1f} min")
    print("by kind: " + ", ".join(f"{k} {m:.1f}" for k, m in student_path_parts().items()) + " min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
