"""How long the lab's student path takes to read: a word count turned into minutes.

The student path is the three notebooks without the parts marked optional: a "## " or "### " heading with
選讀 (optional reading: 02's tokenizer aside in section 1 and its section 7, the comparison study and the
handout's recipes; 03's section 5, the latency) or 選做 (an optional exercise) in it, down to the next heading
of its level or above. Every other cell is counted, code included (03's section 6, one base serving three tasks,
is on the path); training and waiting are not reading and are left out (02's section 0 prints those).

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

#: The student path's notebooks, in reading order.
STUDENT_PATH = ("01-Setup.ipynb", "02-Train.ipynb", "03-Inference.ipynb")
#: Words in a heading that take its part off the student path.
OPTIONAL_MARKS = ("選讀", "選做")

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
    """The notebook split at its "## " and "### " headings (the part before the first one is "top"), each counted.

    A "### " part is titled "<its ## heading> › <its own heading>". ``seen`` holds the code cells read already
    (updated here): a cell in it counts nothing.
    """
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    seen = set() if seen is None else seen
    parts: list[tuple[str, Reading]] = [("top", Reading())]
    chapter = "top"
    for cell in cells:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith(("## ", "### ")):
            heading = text.splitlines()[0]
            if heading.startswith("## "):
                chapter = heading
            parts.append((heading if heading == chapter else f"{chapter} › {heading}", Reading()))
        if cell["cell_type"] == "code" and text in seen:
            continue
        if cell["cell_type"] == "code":
            seen.add(text)
        title, reading = parts[-1]
        parts[-1] = (title, reading + cell_reading(cell))
    return parts


def is_optional(title: str) -> bool:
    """Whether a part (a title from :func:`sections`) is marked optional, by its own heading or its chapter's."""
    return any(mark in title for mark in OPTIONAL_MARKS)


def path_sections(root: Path = ROOT):
    """The student path's parts in reading order: ``(notebook, title, Reading)``; code met again counts nothing."""
    seen: set[str] = set()
    for name in STUDENT_PATH:
        for title, r in sections(root / name, seen):
            if not is_optional(title):
                yield name, title, r


def student_path_minutes(root: Path = ROOT) -> tuple[float, dict[str, float]]:
    """Minutes to read the student path, and per notebook."""
    per_notebook = {name: 0.0 for name in STUDENT_PATH}
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
    for name in STUDENT_PATH:
        print(name)
        for title, r in sections(ROOT / name, seen):
            mark = "  (optional: not on the student path)" if is_optional(title) else ""
            print(f"  {r.minutes:5.1f} min  {r.cjk:5d} 字 {r.words:4d} words {r.code_lines:3d} code lines "
                  f"{r.outputs:2d} outputs  {title[:60]}{mark}")
    total, per_notebook = student_path_minutes()
    print("student path: " + " + ".join(f"{n} {m:.1f}" for n, m in per_notebook.items()) + f" = {total:.1f} min")
    print("by kind: " + ", ".join(f"{k} {m:.1f}" for k, m in student_path_parts().items()) + " min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
