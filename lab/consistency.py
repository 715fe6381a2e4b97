"""Do the same bias groups move most on every task? Packs of several tasks against one base.

The handout (section 3.2) and the BitFit paper (Ben Zaken et al. 2022, section 4 and its figure of
the change per bias) say that the query biases and the intermediate (FFN-in, the paper's
``b_m2``) biases change most. This module measures that on the lab's packs: for each task, the
lab's change measure (``lab.analysis.bias_changes``: ``(1/dim) * ||b0 - bF||_1`` per layer and
bias group) of its pack against the base, averaged over the task's packs (seeds); each group's
mean over the encoder layers ranks the groups; the answer is computed from those ranks, and is
"yes" only when every task's top groups are the claimed ones.

Pure functions over tensors and DataFrames (matplotlib only in :func:`plot_consistency`); the
script ``python -m study.consistency`` applies them to a folder of packs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Sequence

import torch

#: What the handout and the paper say moves most: query and intermediate (FFN-in).
CLAIMED_GROUPS: tuple[str, ...] = ("query", "intermediate")
#: How the sentences cite the claim.
SOURCE = "講義（3.2 節）與 Ben Zaken 等人（2022）"


def pack_changes(base_biases: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                 groups: Mapping[str, str]):
    """The change of one pack's biases against the base, per layer and bias group.

    Args:
        base_biases: the base model's parameters (or just its biases) by name.
        tensors: a pack's tensors (``lab.packs.read_bias_checkpoint``); the head is ignored.
        groups: parameter name -> bias group (``bitfit_utils.parameter_groups(base_model)``).

    Returns:
        ``lab.analysis.bias_changes``' DataFrame: rows layers (plus ``embeddings``/``pooler``), columns groups.
    """
    from lab.analysis import bias_changes_from_tensors

    return bias_changes_from_tensors(dict(base_biases), dict(tensors), dict(groups))


def changes_by_task(base_model: torch.nn.Module, paths: Sequence) -> dict:
    """Read packs and measure each against ``base_model``; average a task's packs (its seeds).

    Args:
        base_model: the base the packs were trained on, in its base state (nothing is loaded into it).
        paths: pack files (``lab.packs``), of one or several tasks.

    Returns:
        Task (as the packs record it) -> :func:`mean_changes` of its packs, tasks in the order first met.

    Raises:
        ValueError: a pack that does not fit ``base_model`` (another base: its recorded fingerprint of the
            frozen weights differs), or an unreadable pack.
    """
    import bitfit_utils as bu
    from lab import packs

    groups = bu.parameter_groups(base_model)
    base = {n: p.detach() for n, p in base_model.named_parameters()}
    tables: dict[str, list] = {}
    for path in paths:
        tensors, meta = packs.read_bias_checkpoint(path)
        if packs.base_fingerprint(base_model, tensors) != meta["fingerprint"]:
            raise ValueError(f"Pack '{path}' ({meta['task']}) was not trained on this base model: its fingerprint of "
                             f"the frozen weights differs (trained on '{meta['base_model']}'). Compare packs of one base.")
        tables.setdefault(meta["task"], []).append(pack_changes(base, tensors, groups))
    return {task: mean_changes(t) for task, t in tables.items()}


def mean_changes(tables: Sequence):
    """The cell-by-cell mean of several :func:`pack_changes` tables (one task's seeds), rows in the first's order.

    Raises:
        ValueError: no tables.
    """
    import pandas as pd

    if not tables:
        raise ValueError("No change tables to average: give at least one pack per task.")
    order = list(dict.fromkeys(i for t in tables for i in t.index))
    columns = list(dict.fromkeys(c for t in tables for c in t.columns))
    mean = pd.concat(tables).groupby(level=0, sort=False).mean()
    return mean.reindex(index=order, columns=columns).rename_axis("layer")


def group_profile(changes):
    """Each bias group's mean change over the encoder layers (rows named by a layer number), largest first.

    The ``embeddings`` and ``pooler`` rows are left out: the claim is about the groups every layer has.
    """
    layers = [i for i in changes.index if str(i).split(".")[-1].isdigit()]
    return changes.loc[layers].mean().dropna().sort_values(ascending=False)


@dataclass(frozen=True)
class Consistency:
    """What the tasks' group profiles say.

    Attributes:
        tasks: the tasks compared, in order.
        top: per task, its ``k`` groups that moved most, largest first.
        same_top: every task has the same set of top groups.
        claimed: the groups the claim names.
        matches_claim: per task, whether its top groups are exactly ``claimed`` (in any order).
        min_rank_correlation: the lowest Spearman correlation of the groups' ranks between two tasks
            (1: the same order everywhere; NaN with one task).
        groups: the groups ranked (those every task has).
    """

    tasks: tuple[str, ...]
    top: dict[str, tuple[str, ...]]
    same_top: bool
    claimed: tuple[str, ...]
    matches_claim: dict[str, bool]
    min_rank_correlation: float
    groups: tuple[str, ...] = field(default=())

    @property
    def answer(self) -> bool:
        """Yes to "do the claimed groups move most on every task?"."""
        return self.same_top and all(self.matches_claim.values())


def compare_tasks(profiles: Mapping[str, object], k: int | None = None,
                  claimed: Sequence[str] = CLAIMED_GROUPS) -> Consistency:
    """Compare the tasks' :func:`group_profile` rankings with each other and with ``claimed``.

    Args:
        profiles: task -> its group profile (a pandas Series: group -> mean change).
        k: how many top groups to compare (default: as many as ``claimed`` names).
        claimed: the groups said to move most.

    Raises:
        ValueError: no task, or fewer than ``k`` groups that every task has.
    """
    import pandas as pd

    if not profiles:
        raise ValueError("No task to compare: give one group profile per task.")
    claimed = tuple(claimed)
    k = k or len(claimed)
    import bitfit_utils as bu

    table = pd.DataFrame({t: p for t, p in profiles.items()}).dropna()
    known = [g for g in bu.BIAS_GROUPS if g in table.index]
    table = table.reindex(known + sorted(set(table.index) - set(known)))  # the lab's group order
    if len(table) < k:
        raise ValueError(f"Only {len(table)} bias groups are common to every task ({list(table.index)}); "
                         f"need at least {k} to compare the top {k}.")
    top = {t: tuple(table[t].sort_values(ascending=False, kind="stable").index[:k]) for t in table.columns}
    same = len({frozenset(g) for g in top.values()}) == 1
    matches = {t: set(g) == set(claimed) for t, g in top.items()}
    ranks = table.rank(ascending=False)
    pairs = [float(ranks[a].corr(ranks[b])) for a, b in combinations(table.columns, 2)]
    return Consistency(tuple(table.columns), top, same, claimed, matches,
                       min(pairs) if pairs else float("nan"), tuple(table.index))


def consistency_sentence(result: Consistency, titles: Mapping[str, str] | None = None) -> str:
    """The answer as one or two sentences, built from ``result`` (true for any outcome).

    Args:
        result: :func:`compare_tasks`' result.
        titles: how to write each task (e.g. ``{"sst2": "SST-2"}``); default: the task names.
    """
    name = lambda t: (titles or {}).get(t, t)  # noqa: E731
    both = lambda groups: " 與 ".join(groups)  # noqa: E731
    tasks = "、".join(name(t) for t in result.tasks)
    k = len(next(iter(result.top.values())))
    rho = ("" if result.min_rank_correlation != result.min_rank_correlation
           else f"任兩個任務之間，各組的排名順序 Spearman's rho ≥ {result.min_rank_correlation:.2f}。")
    if result.answer:
        return (f"是：每個任務（{tasks}）在編碼器各層平均下變化最大的 {k} 組偏置都是 {both(result.claimed)}，"
                f"與{SOURCE}說的一致。{rho}")
    per_task = "；".join(f"{name(t)}：{'、'.join(g)}" for t, g in result.top.items())
    if result.same_top:
        return (f"否：每個任務變化最大的 {k} 組相同（{per_task}），但不是{SOURCE}說變化最大的 "
                f"{both(result.claimed)}。{rho}")
    agree = sum(result.matches_claim.values())
    return (f"否：各任務變化最大的 {k} 組不同（{per_task}）；{SOURCE}說變化最大的 {both(result.claimed)}，"
            f"在 {len(result.tasks)} 個任務中只有 {agree} 個排在前 {k}。{rho}")


def plot_consistency(changes_by_task: Mapping[str, object], titles: Mapping[str, str] | None = None,
                     top: Mapping[str, Sequence[str]] | None = None):
    """One heatmap panel per task of its change per layer and group (each panel its own colour scale).

    Args:
        changes_by_task: task -> :func:`pack_changes` (or :func:`mean_changes`) table.
        titles: how to write each task.
        top: task -> its top groups, named in the panel's title.
    """
    import matplotlib.pyplot as plt

    tasks = list(changes_by_task)
    first = next(iter(changes_by_task.values()))
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.6 + (1.0 + 0.38 * first.shape[1]) * len(tasks),
                                                     1.2 + 0.38 * first.shape[0]), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        changes = changes_by_task[task]
        image = ax.imshow(changes.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        ax.set_xticks(range(changes.shape[1]), changes.columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(changes.shape[0]), changes.index, fontsize=8)
        title = (titles or {}).get(task, task)
        if top and task in top:
            title += "\nmost: " + ", ".join(top[task])
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05)
    axes[0][0].set_ylabel("layer")
    fig.suptitle("mean |b0 - bF| per entry, per layer and bias group", fontsize=10)
    fig.tight_layout()
    return fig


def show_consistency(base_model: torch.nn.Module, paths: Sequence, titles: Mapping[str, str] | None = None) -> Consistency:
    """03's figure and sentence for a few packs (one per task) against their untouched ``base_model``.

    Returns:
        The comparison (:func:`compare_tasks`) the figure and the printed sentence come from.
    """
    from lab.tasks import TASKS

    changes = changes_by_task(base_model, list(paths))
    result = compare_tasks({task: group_profile(table) for task, table in changes.items()})
    titles = titles or {t: TASKS[t].title if t in TASKS else t for t in changes}
    plot_consistency(changes, titles, result.top)
    print(consistency_sentence(result, titles))
    return result
