"""Cheap imports: ``import bitfit_utils`` loads torch and no training stack; ``import lab`` only the stdlib.

``bitfit_utils`` is a leaf: it imports nothing of the project and nothing of peft (read from its source).

Each import runs in a fresh interpreter and the test reads ``sys.modules`` afterwards (not a timer).
"""

import ast
import json
import subprocess
import sys

import pytest

from conftest import ROOT

#: What ``import bitfit_utils`` must not load: the Trainer, peft, datasets and the analysis stack
#: (they cost seconds; the functions that need them import them).
HEAVY = ("transformers.trainer", "transformers.training_args", "peft", "datasets", "pandas", "matplotlib", "sklearn")


def modules_loaded_by(statement: str) -> tuple[list[str], list[str]]:
    """Run ``statement`` in a fresh interpreter at the repository root: (modules new in sys.modules, all of them)."""
    code = ("import json, sys\nbefore = set(sys.modules)\n" + statement + "\n"
            "print(json.dumps([sorted(set(sys.modules) - before), sorted(sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    return new, loaded


def test_import_bitfit_utils_loads_no_training_stack():
    new, loaded = modules_loaded_by("import bitfit_utils")
    assert "torch" in loaded and "bitfit_utils" in new
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"import bitfit_utils loads {heavy[:10]}: import them inside the functions that need them"


def test_bitfit_utils_imports_nothing_of_the_project_nor_peft():
    tree = ast.parse((ROOT / "bitfit_utils.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    project = {p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    tops = {name.split(".")[0] for name in imported}
    assert not relative and not tops & (project | {"peft"}), f"bitfit_utils imports {sorted(tops & (project | {'peft'}))}"
    assert tops <= {"__future__", "re", "warnings", "dataclasses", "typing", "torch", "pandas", "transformers"}


def test_importing_lab_families_registers_the_other_roles():
    new, _ = modules_loaded_by("import lab.families, bitfit_utils\nassert 'gate' in bitfit_utils.BIAS_GROUPS")
    assert "lab.families" in new
    new, _ = modules_loaded_by("import bitfit_utils\nassert 'gate' not in bitfit_utils.BIAS_GROUPS")
    assert "lab.families" not in new


@pytest.mark.parametrize("statement", ["import lab", "import lab.setup"])
def test_import_lab_loads_the_standard_library_only(statement):
    new, _ = modules_loaded_by(statement)
    assert "lab" in new
    outside = [m for m in new if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "lab"]
    assert outside == [], f"{statement} loads {outside[:10]} (lab.setup runs before torch is installed)"


def test_no_notebook_imports_the_scripts_folders():
    """What a notebook needs lives in lab/ (or bitfit_utils); benchmarks/ and study/ are scripts."""
    import json
    import re

    from conftest import ROOT

    for path in [*ROOT.glob("0[123]-*.ipynb"), *ROOT.glob("solutions/*.ipynb")]:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert not re.search(r"^\s*(from|import)\s+(benchmarks|study)\b", code, re.M), path.name


def _project_imports(root) -> dict[str, set[str]]:
    """``{module: project modules it imports}``, at module level or inside functions, read from the source."""
    files = [root / "bitfit_utils.py", *sorted(root.glob("lab/*.py")), *sorted(root.glob("study/*.py")),
             *sorted(root.glob("benchmarks/*.py"))]
    names = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in names} - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_project_has_no_import_cycle():
    graph = _project_imports(ROOT)
    assert {"bitfit_utils", "lab.packs", "study.run", "benchmarks.bench_serving"} <= set(graph)
    assert "lab.packs" in graph["lab.serving"]  # the reader sees imports inside functions too
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]  # the check can fail
