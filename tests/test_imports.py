"""Cheap imports: ``import bitfit_utils`` loads torch and no training stack; ``import lab`` only the stdlib.

Each import runs in a fresh interpreter and the test reads ``sys.modules`` afterwards (not a timer).
"""

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


@pytest.mark.parametrize("statement", ["import lab", "import lab.setup", "import lab.families"])
def test_import_lab_loads_the_standard_library_only(statement):
    new, _ = modules_loaded_by(statement)
    assert "lab" in new
    outside = [m for m in new if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "lab"]
    assert outside == [], f"{statement} loads {outside[:10]} (lab.setup runs before torch is installed)"
