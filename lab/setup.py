"""Make the running Jupyter kernel ready for the BitFit lab, wherever a notebook was opened.

The first code cell of every notebook finds the project folder (on Colab it clones ``REPO_URL``
first), imports this module and calls :func:`ensure_ready`, which

1. changes into the project folder and puts it on ``sys.path`` (so notebooks in ``solutions/``
   work too and ``import bitfit_utils`` succeeds);
2. installs the torch pinned in requirements.txt (``torch==2.13.0``, as ``run.sh`` does) only
   when this kernel has no torch at all; an existing torch (Colab's CUDA build, say) is never
   replaced;
3. when a requirement is missing or outside its range, installs the requirements with this
   kernel's own pip (``sys.executable -m pip``, what ``%pip install`` does), holding torch at
   the version the kernel has.

When nothing is missing it only reads package metadata (a fraction of a second).
Only the standard library is used: this runs before numpy or torch exist.

The decisions are pure functions of collected facts (:func:`plan`, :func:`unmet`,
:func:`satisfies`, :func:`pip_failure_message`, :func:`stale_imports`); the functions that act
(:func:`gather_facts`, :func:`carry_out`, :func:`ensure_ready`) are kept apart, so the decisions
are tested without installing anything.

``python -m lab.setup`` runs :func:`ensure_ready` for the Python that runs it. The notebooks'
setup cells and Colab badges are generated from ``REPO_URL`` by ``lab.notebook_sync``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

#: The project's public repository: the Colab badges and the setup cells are generated from it.
REPO_URL = "https://github.com/bitfit-lab/bitfit-lab"
#: Files that mark the project folder.
ROOT_MARKERS = ("lab/setup.py", "bitfit_utils.py", "requirements.txt")

#: Entries of requirements.txt the setup does not install into the kernel, and why.
NOT_FOR_KERNEL = {
    "torch": "installed on its own, and only when the kernel has no torch (see plan)",
    "jupyter": "the front end, not needed inside a kernel; replacing it could break Colab's",
    "ipykernel": "the kernel running this code has one already",
    "pytest": "for bash run.sh test only",
    "nbval": "for bash run.sh test only",
    "pytest-xdist": "for bash run.sh test only",
}


class SetupError(RuntimeError):
    """The kernel could not be made ready. Jupyter shows only the message, which says what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython: print this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class RestartNeeded(SetupError):
    """Packages were upgraded that this kernel had already imported: restart, then run again."""


# ---------------------------------------------------------------------------
# Requirements and versions (pure)
# ---------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_SPEC = re.compile(r"\s*(===|==|!=|~=|>=|<=|>|<)\s*([A-Za-z0-9.*+!_-]+)\s*")


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Scikit_Learn`` -> ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    """One line of requirements.txt: ``name`` or ``name<op>version[,<op>version...]``."""

    name: str                            # normalized
    specs: tuple[tuple[str, str], ...]   # (operator, version), all must hold
    line: str                            # as written; this is what pip is given


def parse_requirement(line: str) -> Requirement:
    """Read one requirement; anything this small reader does not understand is an error."""
    match = _NAME.match(line)
    rest = line[match.end():].strip() if match else None
    specs = []
    for part in rest.split(",") if rest else ():
        spec = _SPEC.fullmatch(part)
        if not spec:
            rest = None
            break
        specs.append((spec.group(1), spec.group(2)))
    if rest is None:
        raise ValueError(f"lab_setup reads requirement lines of the form 'name' or 'name>=1.0,<2', "
                         f"not {line!r}: simplify the line in requirements.txt")
    return Requirement(normalize(match.group()), tuple(specs), line)


def parse_requirements(text: str) -> list[Requirement]:
    """The requirements of a requirements.txt text; comments and blank lines are skipped."""
    lines = (re.sub(r"(^|\s)#.*", "", raw).strip() for raw in text.splitlines())
    return [parse_requirement(line) for line in lines if line]


def _release(version: str) -> tuple[list[int], str]:
    """``'2.13.0+cpu'`` -> ``([2, 13, 0], '')``; ``'5.0.0rc1'`` -> ``([5, 0, 0], 'rc1')``."""
    public = version.split("+", 1)[0].strip().lower()
    match = re.match(r"v?(\d+(?:\.\d+)*)(.*)", public)
    if not match:
        raise ValueError(f"cannot read the version {version!r}")
    return [int(part) for part in match.group(1).split(".")], match.group(2)


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """A sort key good enough for requirement ranges: release numbers, then pre-release < final.

    Trailing zeros do not count (``5.0 == 5.0.0``) and a local label is ignored
    (``2.13.0+cpu == 2.13.0``), as in PEP 440; post-releases count as the release itself.
    """
    release, rest = _release(version)
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre = re.match(r"[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)", rest)
    return tuple(release), 0 if pre else 1


def satisfies(version: str, specs: Iterable[tuple[str, str]]) -> bool:
    """Whether an installed version meets every (operator, version) pair of a requirement."""
    have = version_key(version)
    for op, want in specs:
        if op == "===":
            ok = version == want
        elif want.endswith(".*") and op in ("==", "!="):
            prefix = _release(want[:-2])[0]
            ok = (_release(version)[0] + [0] * len(prefix))[:len(prefix)] == prefix
            ok = ok if op == "==" else not ok
        elif op in ("==", "!=") and "+" in want:
            ok = (version == want) == (op == "==")
        else:
            ref = version_key(want)
            ok = {"==": have == ref, "!=": have != ref, ">=": have >= ref, "<=": have <= ref,
                  ">": have > ref, "<": have < ref}.get(op)
            if op == "~=":
                prefix = _release(want)[0][:-1]
                ok = have >= ref and _release(version)[0][:len(prefix)] == prefix
        if not ok:
            return False
    return True


def unmet(requirements: Iterable[Requirement],
          installed: Mapping[str, str | None]) -> list[tuple[Requirement, str | None]]:
    """The requirements the installed versions do not meet, each with the version found (None: absent)."""
    result = []
    for req in requirements:
        version = installed.get(req.name)
        if version is None or not satisfies(version, req.specs):
            result.append((req, version))
    return result


def describe_unmet(items: Sequence[tuple[Requirement, str | None]]) -> str:
    """``'missing: peft; outside the range: transformers 4.57.1 (needs >=5.0,<6)'``."""
    missing = [req.name for req, version in items if version is None]
    wrong = [f"{req.name} {version} (needs {','.join(op + v for op, v in req.specs)})"
             for req, version in items if version is not None]
    parts = ([f"missing: {', '.join(missing)}"] if missing else []) + \
            ([f"outside the range: {', '.join(wrong)}"] if wrong else [])
    return "; ".join(parts)


# ---------------------------------------------------------------------------
# Decisions (pure)
# ---------------------------------------------------------------------------


def on_colab(modules: Mapping[str, object], environ: Mapping[str, str]) -> bool:
    """A Google Colab runtime: its kernel imports ``google.colab`` and sets ``COLAB_RELEASE_TAG``."""
    return "google.colab" in modules or "COLAB_RELEASE_TAG" in environ


def find_root(start: Path) -> Path:
    """The project folder: ``start`` or the nearest parent holding all ROOT_MARKERS."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if all((folder / marker).is_file() for marker in ROOT_MARKERS):
            return folder
    raise SetupError(f"{' and '.join(ROOT_MARKERS)} are not in {start} or a folder above it: "
                     f"open the notebook inside the project folder (git clone {REPO_URL}).")


@dataclass(frozen=True)
class Facts:
    """What :func:`plan` decides from; :func:`gather_facts` collects it from the running kernel."""

    root: Path                                 # the project folder
    cwd: Path                                  # the kernel's working folder
    sys_path: tuple[str, ...]
    colab: bool
    torch_pin: str                             # torch's line of requirements.txt, e.g. "torch==2.13.0"
    torch_version: str | None                  # the kernel's torch; None: not installed
    requirements: tuple[Requirement, ...]      # requirements.txt without NOT_FOR_KERNEL
    installed: Mapping[str, str | None]        # name -> installed version (None: absent)


@dataclass(frozen=True)
class Action:
    """One step of the setup: ``chdir`` / ``sys.path`` (a folder) or ``pip`` (pip's arguments)."""

    kind: str
    args: tuple[str, ...]
    why: str


def plan(facts: Facts) -> list[Action]:
    """The steps that make the kernel ready; an empty list when it is ready already.

    torch comes first and only when absent: installing the other requirements without a torch
    would let accelerate, peft or sentence-transformers pull the newest torch (a multi-GB CUDA
    build on Linux). The requirements are then installed with torch held at the kernel's version
    (``torch==<installed>`` is satisfied by what is there, so pip never replaces it; if a
    requirement cannot live with that torch, pip stops with an error instead).
    """
    root = str(facts.root)
    actions = []
    if facts.cwd != facts.root:
        actions.append(Action("chdir", (root,), "the notebooks read and write files relative to the project folder"))
    if root not in facts.sys_path:
        actions.append(Action("sys.path", (root,), "so that `import bitfit_utils` finds the project's module"))
    hold = f"torch=={facts.torch_version}" if facts.torch_version else facts.torch_pin
    if facts.torch_version is None:
        actions.append(Action("pip", ("install", facts.torch_pin),
                              f"this kernel has no torch: installing the pinned {facts.torch_pin}"))
    missing = unmet(facts.requirements, facts.installed)
    if missing:
        actions.append(Action("pip", ("install", *(req.line for req in facts.requirements), hold),
                              f"{describe_unmet(missing)} (torch held at {hold.split('==', 1)[1]})"))
    return actions


def pip_failure_message(command: Sequence[str], returncode: int, output: str) -> str:
    """What to tell the student when pip fails: the command to run by hand, and a likely cause."""
    tail = "\n".join(output.strip().splitlines()[-12:])
    hints = []
    if "externally-managed-environment" in output:
        hints.append("this kernel runs the system's Python, which pip may not change: create a virtual "
                     "environment (bash run.sh lab makes .venv) and choose it as the notebook's kernel")
    if "No module named pip" in output:
        hints.append(f"this kernel's Python has no pip: run {shlex.quote(command[0])} -m ensurepip --upgrade")
    if re.search(r"ResolutionImpossible|conflicting dependencies", output) and "torch" in output:
        hints.append("the requirements do not fit this kernel's torch; the setup never replaces an installed "
                     "torch, so install a torch they accept by hand, or use a fresh environment")
    if re.search(r"No matching distribution|Failed to establish a new connection|"
                 r"Temporary failure in name resolution|Could not fetch URL", output):
        hints.append("pip could not reach the package index: connect to the network (or use a machine "
                     "prepared with bash run.sh lab) and run this cell again")
    return "\n".join([f"pip failed (exit code {returncode}). Run this by hand to see the whole error:",
                      f"    {shlex.join(command)}",
                      *(f"Likely cause: {hint}." for hint in hints),
                      "Last lines of pip's output:", tail])


def stale_imports(before: Mapping[str, str], after: Mapping[str, str], imported: Iterable[str],
                  top_levels: Mapping[str, Iterable[str]]) -> list[str]:
    """Distributions whose version changed while one of their modules was already imported.

    ``before``/``after``: distribution -> version around the install; ``imported``: top-level
    module names in ``sys.modules``; ``top_levels``: distribution -> its top-level modules.
    A kernel keeps using the old code of such modules until it is restarted. Private top-level
    modules do not count: ``_distutils_hack`` (setuptools) is imported by a ``.pth`` file at every
    interpreter start, so an upgraded setuptools would otherwise always ask for a restart.
    """
    imported = {name for name in imported if not name.startswith("_")}
    return sorted(f"{dist} {before[dist]} -> {after[dist]}" for dist in after
                  if dist in before and before[dist] != after[dist]
                  and imported.intersection(top_levels.get(dist, ())))


def report(facts: Facts, done: Sequence[Action]) -> str:
    """What the setup cell prints at the end: what it did, and the main versions now in use."""
    lines = [f"lab_setup: working folder is now {a.args[0]}" for a in done if a.kind == "chdir"]
    lines += [f"lab_setup: added {a.args[0]} to sys.path" for a in done if a.kind == "sys.path"]
    installed_torch = any(a.kind == "pip" and a.args[1:] == (facts.torch_pin,) for a in done)
    torch = f"torch {facts.torch_version}" + (" (the Colab runtime's own)" if facts.colab and not installed_torch else "")
    versions = [f"{name} {facts.installed[name]}" for name in ("transformers", "datasets", "peft")
                if facts.installed.get(name)]
    pips = sum(a.kind == "pip" for a in done)
    lines.append(f"lab_setup: ready ({', '.join([torch, *versions])}); "
                 + (f"installed with pip ({pips} command{'s' if pips > 1 else ''}, above)." if pips
                    else "nothing to install."))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Acting on the running kernel
# ---------------------------------------------------------------------------


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gather_facts(root: Path, modules: Mapping[str, object] | None = None,
                 environ: Mapping[str, str] | None = None) -> Facts:
    """Read requirements.txt and the installed versions; nothing is changed."""
    requirements = parse_requirements((Path(root) / "requirements.txt").read_text(encoding="utf-8"))
    torch_pin = next((req.line for req in requirements if req.name == "torch"), None)
    if torch_pin is None:
        raise SetupError(f"{Path(root) / 'requirements.txt'} has no torch line: restore it (torch==2.13.0).")
    kernel = tuple(req for req in requirements if req.name not in NOT_FOR_KERNEL)
    return Facts(root=Path(root).resolve(), cwd=Path.cwd().resolve(), sys_path=tuple(sys.path),
                 colab=on_colab(sys.modules if modules is None else modules,
                                os.environ if environ is None else environ),
                 torch_pin=torch_pin, torch_version=installed_version("torch"), requirements=kernel,
                 installed={req.name: installed_version(req.name) for req in kernel})


def run_streaming(command: Sequence[str]) -> tuple[int, str]:
    """Run a command, print its output as it comes (so the cell shows pip working), return both."""
    lines = []
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return process.returncode, "".join(lines)


def carry_out(actions: Iterable[Action], runner: Callable[[Sequence[str]], tuple[int, str]] = run_streaming,
              python: str | None = None) -> list[Action]:
    """Do the planned steps in order; a failing pip stops with a message saying what to do."""
    done = []
    for action in actions:
        if action.kind == "chdir":
            os.chdir(action.args[0])
        elif action.kind == "sys.path":
            sys.path.insert(0, action.args[0])
        elif action.kind == "pip":
            command = [python or sys.executable, "-m", "pip", *action.args]
            print(f"lab_setup: {action.why}\n$ {shlex.join(command)}", flush=True)
            returncode, output = runner(command)
            if returncode != 0:
                raise SetupError(pip_failure_message(command, returncode, output))
        else:
            raise ValueError(f"unknown action {action.kind!r}")
        done.append(action)
    return done


def _distributions() -> dict[str, str]:
    return {normalize(dist.metadata["Name"] or ""): dist.version for dist in importlib.metadata.distributions()}


def _top_levels() -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            result.setdefault(normalize(dist), []).append(module)
    return result


def ensure_ready(root: Path | str | None = None, *,
                 runner: Callable[[Sequence[str]], tuple[int, str]] = run_streaming) -> None:
    """Make this kernel ready for the lab (see the module docstring) and print what was done.

    ``runner`` runs one pip command and returns (exit code, output); tests pass a fake one.

    Raises SetupError (with the command to run by hand) when a step fails, and RestartNeeded
    when an install changed packages this kernel had already imported.
    """
    root = find_root(Path(root) if root is not None else Path.cwd())
    facts = gather_facts(root)
    actions = plan(facts)
    installs = any(action.kind == "pip" for action in actions)
    before = _distributions() if installs else {}
    done = carry_out(actions, runner)
    if installs:
        importlib.invalidate_caches()
        facts = gather_facts(root)
        left = unmet(facts.requirements, facts.installed)
        if left or facts.torch_version is None:
            last = [action for action in done if action.kind == "pip"][-1]
            raise SetupError(f"pip finished, yet this kernel still does not see "
                             f"{describe_unmet(left) or 'torch'}: restart the kernel and run this cell "
                             f"again; if that does not help, run by hand and read pip's messages: "
                             f"{shlex.join([sys.executable, '-m', 'pip', *last.args])}")
        stale = stale_imports(before, _distributions(), {m.split('.')[0] for m in sys.modules}, _top_levels())
        if stale:
            where = "Runtime > Restart session" if facts.colab else "Kernel > Restart Kernel"
            raise RestartNeeded(f"installed; this kernel had already imported packages that changed "
                                f"({'; '.join(stale)}). Restart it ({where}) and run the notebook again "
                                f"from the top; the setup cell then takes about a second.")
    print(report(facts, done))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lab.setup``: make this Python ready for the lab (:func:`ensure_ready`)."""
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    ensure_ready(Path(__file__).resolve().parents[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
