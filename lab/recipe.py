"""What 02 trains: the study's recipe (rate, stopping rule) or the defaults, and how long it will take.

The study (``python -m study.run``, protocol 3) writes ``results/v3/recipe.json`` once its grid has
chosen; until then the defaults below stand in, and the settings note says which is which.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.registry import METHODS
from lab.selection import MAX_EPOCHS

#: Where the study writes its tables and ``recipe.json`` (protocol 3).
STUDY_DIR = "results/v3"
#: Learning rate per method until the study's grid has chosen one (the registry's ``default_lr``).
DEFAULT_LR: dict[str, float] = {m: spec.default_lr for m, spec in METHODS.items() if spec.default_lr is not None}
#: Epochs a run is expected to train before the stopping rule ends it, until the study has measured it.
EPOCHS_GUESS: dict[str, float] = {"frozen": 10, "bitfit": 11, "full": 7}
#: How the notebooks name the study's methods (the registry's labels).
METHOD_NAMES = {m: spec.label for m, spec in METHODS.items() if spec.label}


def read_recipe(results_dir: str | os.PathLike = STUDY_DIR) -> dict | None:
    """The study's ``recipe.json`` (head, stopping rule, chosen rates, every reported seed), or None before it exists."""
    path = Path(results_dir) / "recipe.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def head_for(model, recipe: dict | None) -> str:
    """The head 02 trains ``model`` with: the study's choice for a checkpoint whose pooler was never trained,
    else the standard ``[CLS]`` head through the trained pooler (``lab.heads``)."""
    from lab.heads import pooler_was_trained

    return "cls" if pooler_was_trained(model) or not recipe else recipe.get("head") or "cls"


def lr_text(rate: float) -> str:
    """A learning rate as people write it: 0.001 -> 1e-3, 5e-05 -> 5e-5, 0.01 -> 1e-2."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def settings_note(lr: dict[str, float], recipe: dict | None, patience: int | None, cap: int,
                  results_dir: str | os.PathLike = STUDY_DIR) -> str:
    """One line per method: its rate, the stopping rule, and where the rate comes from."""
    chosen = (recipe or {}).get("methods", {})
    rule = (f"until validation MCC (Matthews correlation: 1 perfect, 0 for one answer to every pair; section 1) has "
            f"not improved for {patience} epochs, at most {cap}") if patience else f"{cap} epochs"
    lines = []
    for method, rate in lr.items():
        source = (f"the study's choice on {recipe.get('model', 'its model')} ({Path(results_dir) / 'recipe.json'})"
                  if method in chosen
                  and chosen[method]["lr"] == rate else "this notebook's default: the study has not chosen one yet")
        lines.append(f"  {METHOD_NAMES.get(method, method):<20} lr {lr_text(rate)}  <- {source}")
    return "\n".join([*lines, f"  every method trains {rule} (the study's stopping rule, lab.selection)"])


#: Quick mode (CI, ``BITFIT_QUICK=1``) scores validation and dev on their first this many pairs.
QUICK_EVAL_PAIRS = 128
#: The instructor demo on a CPU (``BITFIT_DEMO=1``): the offline model, half the pairs per step, BitFit at
#: lr 1e-3 for 4 epochs with no early stop, no Frozen and no Full FT (section 6 shows the study's seeds),
#: and bf16 autocast where the CPU computes bf16 in hardware. 1e-3 is BitFit's default rate (``DEFAULT_LR``),
#: not necessarily the rate the study chose (``recipe.json``): the printed note says which it is
#: (``demo_rate_text``). Designed for <= 6 minutes of 02 on a 2-core CPU; ``benchmarks/time_demo.py`` measures
#: it (results/demo_cpu.json).
DEMO_CPU = {"batch_size": 16, "epochs": {"bitfit": 4}, "bitfit_lr": 1e-3, "section_6": [], "bf16": True}


def demo_rate_text(demo_lr: float, recipe: dict | None) -> str:
    """How the demo's BitFit rate compares with the study's choice, for the demo's note.

    Returns:
        ``"lr 1e-3 (not the study's 3e-4)"``, ``"lr 1e-3 (the study's rate)"``, or, before the study
        has chosen, ``"lr 1e-3 (the study has not chosen a rate yet)"``.
    """
    chosen = (recipe or {}).get("methods", {}).get("bitfit", {}).get("lr")
    if chosen is None:
        return f"lr {lr_text(demo_lr)} (the study has not chosen a rate yet)"
    if math.isclose(chosen, demo_lr):
        return f"lr {lr_text(demo_lr)} (the study's rate)"
    return f"lr {lr_text(demo_lr)} (not the study's {lr_text(chosen)})"


@dataclass
class RunSettings:
    """What 02 trains: rate, epoch cap and expected epochs per method, stopping rule, batch, pairs, model; ``note`` says why."""

    lr: dict[str, float]
    epochs: dict[str, int]  # the most epochs a training may run
    batch_size: int
    train_subset: int | None  # None: every training pair
    model_name: str | None
    section_6: list[str]  # trained in section 6 beside section 3's BitFit
    note: str
    bf16: bool = False  # bf16 autocast (mixed precision) for every training: the CPU demo, on a CPU with native bf16
    patience: int | None = None  # stop after this many epochs without a better validation MCC (None: run every epoch)
    expected_epochs: dict[str, float] = field(default_factory=dict)  # for the time forecast: where the rule stops
    forecast_steps: int = 3  # timed steps per method in section 0's forecast (QUICK: 1)
    eval_subset: int | None = None  # validation and dev scored on their first this many pairs (QUICK: 128)
    demo: bool = False  # the instructor demo's trades (DEMO_CPU) are in these settings

    def trainer_args(self, method: str) -> dict[str, Any]:
        """``make_trainer`` / ``train_method`` keywords for ``method``: rate, epoch cap, stopping rule, batch, bf16."""
        return {"learning_rate": self.lr[method], "epochs": self.epochs[method], "patience": self.patience,
                "batch_size": self.batch_size, "bf16": self.bf16}


def run_settings(quick: bool, demo: bool, model_name: str | None, device: str,
                 results_dir: str | os.PathLike = STUDY_DIR, batch_size: int = 32) -> RunSettings:
    """02's settings: the study's recipe (chosen rate, stopping rule) where it has chosen, else the defaults.

    The expected epochs (for section 0's forecast) are the mean epochs the study's runs of that rate
    trained before the rule stopped them, else ``EPOCHS_GUESS``. ``quick`` (CI): 256 training pairs, one
    epoch each, validation and dev scored on ``QUICK_EVAL_PAIRS`` pairs each. ``demo`` on a CPU: ``DEMO_CPU``,
    with every trade printed in ``note``; on a GPU the demo changes nothing. The note names each setting's source.
    """
    from lab.models import OFFLINE_MODEL, cpu_has_native_bf16
    from lab.selection import PATIENCE

    recipe = read_recipe(results_dir)
    chosen = (recipe or {}).get("methods", {})
    methods = ("bitfit", "frozen", "full")
    lr = {m: chosen[m]["lr"] if m in chosen else DEFAULT_LR[m] for m in methods}
    cap = (recipe or {}).get("max_epochs", MAX_EPOCHS)
    patience = (recipe or {}).get("patience", PATIENCE)
    epochs = {m: cap for m in methods}
    expected = {m: chosen[m]["mean_epochs_run"] if m in chosen else EPOCHS_GUESS[m] for m in methods}
    lines = ["Learning rate per method and the stopping rule:", settings_note(lr, recipe, patience, cap, results_dir),
             "Section 0 forecasts each training for the epochs the rule is expected to let it run: "
             + ", ".join(f"{METHOD_NAMES[m]} ~{expected[m]:.0f}" for m in methods)
             + (" (the mean of the study's runs at these rates)." if chosen else " (a guess until the study has runs).")]
    subset, section_6, bf16 = None, ["frozen", "full"], False
    if quick:
        subset, epochs, expected, patience = 256, {m: 1 for m in methods}, {m: 1 for m in methods}, None
        lines.append(f"QUICK: {subset} training pairs, 1 epoch per method, validation and dev scored on their first "
                     f"{QUICK_EVAL_PAIRS} pairs; the scores only show that the code runs.")
    elif demo and device != "cpu":
        lines.append("DEMO on a GPU: the settings above run unchanged (section 0 estimates their time here).")
    elif demo:
        model_name = model_name or OFFLINE_MODEL
        d = DEMO_CPU
        lines.append(
            f"DEMO on a CPU trades away: model {model_name}; "
            + (f"batch {d['batch_size']} instead of {batch_size}; " if d["batch_size"] != batch_size else "")
            + f"BitFit at {demo_rate_text(d['bitfit_lr'], recipe)} for {d['epochs']['bitfit']} epochs, no early stop "
              "(not the stopping rule above); "
            + ("Frozen and Full FT are not trained (section 6 shows the study's seeds). " if not d["section_6"] else "")
            + "One seed, fewer steps: lower and noisier scores than the full settings.")
        bf16 = d["bf16"] and cpu_has_native_bf16()
        if d["bf16"]:
            lines.append("DEMO precision: bf16 autocast instead of float32 (bf16 is a 16-bit float format; this CPU "
                         "computes it in hardware; the weights stay float32)." if bf16 else "DEMO precision: float32 "
                         "(this CPU has no bf16 instructions, AVX512-BF16 or AMX, that would make the 16-bit bf16 "
                         "format faster).")
        batch_size, section_6, patience = d["batch_size"], list(d["section_6"]), None
        epochs, lr = {**epochs, **d["epochs"]}, {**lr, "bitfit": d["bitfit_lr"]}
        expected = {**expected, **d["epochs"]}
    return RunSettings(lr, epochs, batch_size, subset, model_name, section_6, "\n".join(lines), bf16, patience,
                       expected, forecast_steps=1 if quick else 3, eval_subset=QUICK_EVAL_PAIRS if quick else None,
                       demo=demo and not quick and device == "cpu")


def planned_trainings(run: RunSettings, train_pairs: int, eval_pairs: int):
    """02's trainings in order: section 3's BitFit, section 6's methods, exercise 3 (one BitFit epoch).

    Each is planned for the epochs the stopping rule is expected to let it run (``run.expected_epochs``).
    """
    from lab.timing import plan_training

    n = run.train_subset or train_pairs
    epochs = {m: min(run.epochs[m], math.ceil(run.expected_epochs.get(m, run.epochs[m]))) for m in run.epochs}
    return [plan_training("section 3: BitFit", "bitfit", n, run.batch_size, epochs["bitfit"], eval_pairs),
            *(plan_training(f"section 6: {METHOD_NAMES[m]}", m, n, run.batch_size, epochs[m], eval_pairs)
              for m in run.section_6),
            plan_training("exercise 3", "bitfit", n, run.batch_size, 1, eval_pairs)]


def forecast(model, tokenizer, splits, run: RunSettings, max_length: int = 128):
    """02's time forecast (its section 0; 01 shows it too): a few measured steps times 02's planned trainings.

    Returns:
        ``(costs, plans, text)``: the measured ``StepCosts``, the ``planned_trainings`` and what to print.
    """
    from lab.timing import measure_step_costs, time_estimate_text

    plans = planned_trainings(run, len(splits["train"]), len(splits["validation"]) + len(splits["dev"]))
    costs = measure_step_costs(model, tokenizer, splits["train"], ("bitfit", *run.section_6), batch_size=run.batch_size,
                               max_length=max_length, steps=run.forecast_steps, bf16=run.bf16)
    return costs, plans, time_estimate_text(costs, plans, model.name_or_path, optional=("exercise 3",), demo=run.demo)


def forecast_for_02(model, tokenizer, data, quick: bool, model_name: str | None) -> str:
    """01's look ahead: which model 02 trains and :func:`forecast` of 02's full settings on this device."""
    from lab.data import selection_splits
    from lab.models import get_device

    run = run_settings(quick, False, model_name, get_device().type)
    return (f"02 will train {model.name_or_path} on this {get_device().type}.\n"
            + forecast(model, tokenizer, selection_splits(data), run)[2])


def exercise_3_text(costs, run: RunSettings, splits, model_name: str, bitfit_run) -> str:
    """What 02's exercise 3 is compared with, and how long its one epoch takes here (from section 0's costs).

    ``bitfit_run`` is section 3's trainer, or the path of its pack after a kernel restart. ``costs`` need
    only BitFit's step (after a restart, ``rebuild_for_02`` measures no other method).
    """
    from lab.timing import estimate_trainings

    eval_pairs = len(splits["validation"]) + len(splits["dev"])
    plan = [p for p in planned_trainings(run, len(splits["train"]), eval_pairs) if p.label == "exercise 3"]
    seconds = estimate_trainings(costs, plan)["exercise 3"]
    compared_with = str(bitfit_run) if isinstance(bitfit_run, (str, os.PathLike)) else "section 3"
    return (f"Exercise 3 is compared with {compared_with}; it trains one epoch: about {seconds / 60:.1f} min "
            f"with {model_name} on this {costs.device}.")
