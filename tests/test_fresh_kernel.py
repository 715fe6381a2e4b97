"""Slow (a few minutes): 01's first cell sets up a kernel that has nothing but jupyter + ipykernel.

A new virtual environment gets only jupyter and ipykernel. 01-Setup.ipynb is executed with that
environment's kernel (its first cell installs torch 2.13.0 and the requirements into it); then
02-Train.ipynb runs in the same kind of kernel, in quick mode and offline, through section 3 (its
setup cell, data, model, a BitFit training and the saved pack), and every ``lab`` module is imported
there. Both run on a copy of the project in a temporary folder, never on the committed notebooks.

The rest of 02 runs to the end under nbval in the test environment; this test asserts that the kernel
01 built holds exactly the same packages and versions, so that run stands for this kernel too. Both
environments come from the package index minutes apart, and a release in between (it happened: pandas
3.1.1 then 3.1.2) would make them differ for a reason that is not 01's; so the new environment installs
under the test environment's versions as pip constraints (``-c`` and ``PIP_CONSTRAINT``, which 01's pip
inherits). Constraints install nothing: 01 still has to install every package itself, and a package it
leaves out or adds still shows.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from lab import setup as ls
from test_lab_setup import copy_project

pytestmark = pytest.mark.slow

KERNEL = "bitfit-fresh-venv"


def _run(command, **kwargs):
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, command))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _packages(python):
    listed = _run([python, "-m", "pip", "list", "--format", "json"]).stdout
    return {ls.normalize(p["name"]): p["version"] for p in json.loads(listed)}


#: pip's own tools: run.sh upgrades pip in .venv, 01 uses the kernel's pip as it is.
INSTALLERS = {"pip", "setuptools", "wheel"}


def _requirement_closure(names) -> set[str]:
    """``names`` and every distribution they require, transitively, in this (the test) environment."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo = set(), [ls.normalize(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [ls.normalize(r.name) for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate()]
    return seen


def _constraints(path, packages: dict[str, str]) -> str:
    """Write ``packages`` (name: version) as a pip constraints file, pip's own tools left free."""
    path.write_text("".join(f"{name}=={version}\n" for name, version in packages.items() if name not in INSTALLERS))
    return str(path)


def _outputs(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_01_sets_up_a_bare_kernel_and_02_trains_in_it(tmp_path, mrpc_dir):
    try:
        _check(tmp_path, mrpc_dir)
    finally:  # the venv holds torch (about 1 GB); pytest keeps the last runs' temporary folders
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)


def _check(tmp_path, mrpc_dir):
    times = {}
    start = time.perf_counter()
    project = copy_project(tmp_path / "bitfit-lab")
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "venv", str(venv)])
    tests = _packages(sys.executable)
    constraints = _constraints(tmp_path / "constraints.txt", tests)
    _run([python, "-m", "pip", "install", "-q", "-c", constraints, "jupyter", "ipykernel"])
    _run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL])
    bare = _packages(python)
    assert "torch" not in bare and "transformers" not in bare and "numpy" not in bare
    times["venv with jupyter + ipykernel"] = time.perf_counter() - start

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               BITFIT_QUICK="1", BITFIT_DATA_DIR=str(mrpc_dir), PIP_CONSTRAINT=constraints)

    def execute(name, out):
        _run([str(venv / "bin" / "jupyter"), "nbconvert", "--to", "notebook", "--execute", name,
              "--output", out, f"--ExecutePreprocessor.kernel_name={KERNEL}",
              "--ExecutePreprocessor.timeout=1800"], cwd=project, env=env, timeout=3600)
        return nbformat.read(project / out, as_version=4)

    step = time.perf_counter()
    setup_nb = execute("01-Setup.ipynb", "01-executed.ipynb")
    times["01 (installs)"] = time.perf_counter() - step
    said = _outputs(setup_nb.cells[1])
    assert "this kernel has no torch: installing the pinned torch==2.13.0" in said
    assert "missing: transformers" in said and "installed with pip (2 commands, above)." in said

    installed = _packages(python)
    assert installed["torch"] == "2.13.0+cpu"
    assert not [name for name in installed if name.startswith("nvidia")]
    facts = ls.gather_facts(project)
    assert not ls.unmet(facts.requirements, installed)

    test_only = _requirement_closure([n for n, why in ls.NOT_FOR_KERNEL.items() if "run.sh test" in why])
    differ = {n: (installed.get(n), tests.get(n)) for n in set(installed) | set(tests) - test_only - INSTALLERS
              if n not in INSTALLERS and installed.get(n) != tests.get(n)}
    assert not differ, ("01's kernel and the test environment differ (name: (01's kernel, tests)), so nbval's run of "
                        f"02 does not stand for 01's kernel. Rebuild .venv (rm -rf .venv; bash run.sh test): {differ}")

    train = nbformat.read(project / "02-Train.ipynb", as_version=4)
    saved = next(i for i, c in enumerate(train.cells) if "packs.save_bias_checkpoint(" in c.source)
    train.cells = train.cells[:saved + 1]  # through section 3: setup, data, model, a BitFit training, its pack
    train.cells.append(nbformat.v4.new_code_cell(
        "import importlib, pkgutil, sys, torch, lab\n"
        "for module in pkgutil.iter_modules(lab.__path__):\n"
        "    importlib.import_module(f'lab.{module.name}')\n"
        "print('KERNEL', sys.prefix, torch.__version__)"))
    nbformat.write(train, project / "02-check.ipynb")
    step = time.perf_counter()
    done = execute("02-check.ipynb", "02-executed.ipynb")
    times["02 through section 3 (quick mode)"] = time.perf_counter() - step
    assert _outputs(done.cells[1]).strip().endswith("nothing to install.")
    assert _outputs(done.cells[-1]).strip() == f"KERNEL {venv} 2.13.0+cpu"
    assert (project / "packs" / "mrpc_bitfit.safetensors").is_file()
    times["total"] = time.perf_counter() - start
    print("fresh kernel timings (s):", {k: round(v) for k, v in times.items()})
