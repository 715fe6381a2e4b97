"""Consistency across tasks: do the same bias groups move most on MRPC, SST-2 and CoLA?

Reads the BitFit packs of a folder that the study's reported runs wrote (``--pattern``, default
``seeds-bitfit-*`` and ``*-task-bitfit-*``: MRPC's seeds and the other tasks' seeds; the grid's seed-0
runs and the head stage are left out, as they are of every reported number),
measures each against the base it records (``lab.consistency``: the lab's change per layer and bias
group, a task's packs averaged), and writes into ``--out``:

* ``consistency.png``: one heatmap panel per task;
* ``consistency.json``: the tasks, packs used, each task's group profile and top groups, the answer;
* ``consistency.md``: the sentence and a table of the group profiles, for results/README.

Packs trained with the mean-pooling head (``study.run``'s ``head`` stage) are measured against a
base with that head; ``--head cls`` or ``--head mean`` keeps only one kind.

    python -m study.consistency --packs results/v3/packs --out results/v3
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from torch import nn

from lab import packs
from lab.consistency import (CLAIMED_GROUPS, changes_by_task, compare_tasks, consistency_sentence, group_profile,
                             plot_consistency)
from lab.tasks import TASKS, in_task_order

ROOT = Path(__file__).resolve().parents[1]
#: The figure to compare with, named under the table.
PAPER_FIGURE = ("對照：Ben Zaken 等人（2022）的圖 1，BERT-base 做 BitFit 之後每層各組偏置的變化量，"
                "其中 query 與 MLP 中間層（intermediate）的偏置變化最大。")
#: The packs of the study's reported runs (``study.run``'s names): MRPC's seeds, the other tasks' seeds.
REPORTED = ("seeds-bitfit-*", "*-task-bitfit-*")


def pack_head(tensors: dict, base: nn.Module) -> str:
    """``"cls"`` when the pack holds the pooler's bias the base has, ``"mean"`` when it lacks it."""
    return "cls" if set(packs.pack_names(base)) <= set(tensors) else "mean"


def main(argv: list[str] | None = None, base_model: nn.Module | None = None) -> int:
    """Run the script; ``base_model`` replaces the base the packs name (tests pass a tiny model)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=Path, default=ROOT / "results" / "v3" / "packs", help="folder of packs")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "v3", help="where the files go")
    parser.add_argument("--pattern", action="append", default=None,
                        help=f"which files of --packs to read (repeatable; default {' and '.join(REPORTED)})")
    parser.add_argument("--head", choices=("cls", "mean", "any"), default="any", help="keep packs of this head")
    args = parser.parse_args(argv)
    patterns = args.pattern or list(REPORTED)
    paths = sorted(p for p in args.packs.glob("*.safetensors")
                   if any(fnmatch.fnmatch(p.stem, x) or fnmatch.fnmatch(p.name, x) for x in patterns))
    if not paths:
        print(f"No packs matching {' or '.join(patterns)} in {args.packs}: run the study (python -m study.run) first.")
        return 1
    bases: dict[str, nn.Module] = {}
    chosen: dict[str, list[Path]] = {}
    for path in paths:
        tensors, meta = packs.read_bias_checkpoint(path)
        if "cls" not in bases:
            bases["cls"] = base_model if base_model is not None else _load_base(meta["base_model"])
        head = pack_head(tensors, bases["cls"])
        if args.head in (head, "any"):
            chosen.setdefault(head, []).append(path)
    tables: dict[str, object] = {}
    used: dict[str, list[str]] = {}
    for head, group in chosen.items():
        if head not in bases:
            from lab.heads import set_pooling
            import copy

            bases[head] = set_pooling(copy.deepcopy(bases["cls"]), head)
        for task, table in changes_by_task(bases[head], group).items():
            tables.setdefault(task, []).append(table)
        for path in group:
            used.setdefault(packs.read_bias_checkpoint(path)[1]["task"], []).append(path.name)
    from lab.consistency import mean_changes

    order = in_task_order(tables)
    changes = {task: mean_changes(tables[task]) for task in order}
    titles = {t: TASKS[t].title if t in TASKS else t for t in changes}
    profiles = {t: group_profile(c) for t, c in changes.items()}
    result = compare_tasks(profiles)
    sentence = consistency_sentence(result, titles)
    args.out.mkdir(parents=True, exist_ok=True)
    fig = plot_consistency(changes, titles, result.top)
    fig.savefig(args.out / "consistency.png", dpi=110)
    facts = {"question": f"Do the same bias groups move most on every task, as the handout and Ben Zaken et al. "
                         f"(2022) say ({' and '.join(CLAIMED_GROUPS)})?",
             "answer": "yes" if result.answer else "no", "sentence": sentence, "tasks": list(result.tasks),
             "packs": {t: sorted(used[t]) for t in result.tasks}, "heads": sorted(chosen),
             "top": {t: list(g) for t, g in result.top.items()}, "same_top": result.same_top,
             "min_rank_correlation": result.min_rank_correlation,
             "profiles": {t: {g: float(v) for g, v in p.items()} for t, p in profiles.items()}}
    (args.out / "consistency.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
    groups = list(result.groups)
    lines = [sentence, "", "每組偏置每個元素的平均變化量，對編碼器各層取平均（`lab.analysis.bias_changes`；"
             "同一任務的幾個 pack 再取平均；`packs` 是用到的 pack 數）：", "",
             "| task | packs | " + " | ".join(groups) + " |", "|---|---:|" + "---:|" * len(groups)]
    for t in result.tasks:
        lines.append(f"| {titles[t]} | {len(used[t])} | " + " | ".join(f"{profiles[t][g]:.2e}" for g in groups) + " |")
    lines += ["", "![各任務每層各組偏置的變化量](consistency.png)", "", PAPER_FIGURE, ""]
    (args.out / "consistency.md").write_text("\n".join(lines))
    print(sentence)
    print(f"wrote {args.out / 'consistency.png'}, consistency.json, consistency.md ({sum(map(len, used.values()))} packs)")
    return 0


def _load_base(name: str) -> nn.Module:
    from lab.models import load_model

    return load_model(name, verbose=False)[0]


if __name__ == "__main__":
    sys.exit(main())
