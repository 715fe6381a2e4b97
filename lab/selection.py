"""The one rule that picks an epoch (and, in the study, a learning rate): best validation MCC.

Every training of the lab follows it: ``lab.training.KeepBest`` while a Trainer runs, the study
when it reads its run files. Matthews correlation is used because any constant prediction
scores exactly 0 on it, so the majority class cannot win (it wins F1: answering "equivalent"
for every MRPC pair already scores F1 81).
"""

from __future__ import annotations

from typing import Mapping, Sequence

#: The metric that selects: MCC on the validation split carved from train (never dev).
SELECT_BY = "validation_mcc"
#: The most epochs any run trains; the stopping rule ends nearly every run before it (the study reports how often not).
#: It was 20 until BitFit's first reported seed kept its 20th epoch, still improving; the study re-runs the runs
#: that cap cut short (``study.run.cut_by_cap``). A run that stopped before it trained the same under either cap.
MAX_EPOCHS = 40
#: Epochs without a better ``SELECT_BY`` after which training stops (every method, every run), counted
#: once the run has left the majority class (``should_stop``).
PATIENCE = 3


def tie_break_metric(metric: str) -> str:
    """The metric that breaks a tie on ``metric``: accuracy on the same split (``validation_mcc`` -> ``validation_accuracy``)."""
    return metric[: -len("mcc")] + "accuracy" if metric.endswith("mcc") else metric


def selection_key(entry: Mapping[str, float], metric: str = SELECT_BY) -> tuple[float, float, float]:
    """Sort key of one evaluated epoch: higher ``metric``, then higher accuracy of the same split, then earlier."""
    tie = tie_break_metric(metric)
    return (entry[metric], entry.get(tie, 0.0), -entry["epoch"])


def best_entry(log: Sequence[Mapping[str, float]], metric: str = SELECT_BY) -> Mapping[str, float]:
    """The epoch the rule keeps among ``log`` (one mapping per evaluated epoch, with ``"epoch"``)."""
    if not log:
        raise ValueError("No evaluated epoch to select from: train for at least one epoch with evaluation.")
    return max(log, key=lambda entry: selection_key(entry, metric))


def should_stop(log: Sequence[Mapping[str, float]], patience: int | None, metric: str = SELECT_BY) -> bool:
    """True when the last ``patience`` evaluations brought no better epoch (``None``: never stop early).

    For an MCC, the count starts once some epoch scored above 0: a run still predicting one class
    (MCC 0) is on the slow start that bias-only training shows, not past its best, and only the
    epoch cap stops it. Otherwise a learning rate slower to leave that plateau would be judged by
    where it stood when patience ran out.
    """
    if patience is None or not log:
        return False
    best = best_entry(log, metric)
    if metric.endswith("mcc") and best[metric] <= 0:
        return False
    return len([e for e in log if e["epoch"] > best["epoch"]]) >= patience
