"""One frozen base serving three tasks' BitFit packs: switch cost, mixed-batch throughput, memory.

Two bases: the offline MiniLM (pre-trained) and BERT-base's shape with random weights (no download).
The three packs are synthetic (biases randomly perturbed, random heads; nothing trained): the
timings and the equality check do not depend on what the biases learned. The request stream mixes
MRPC pairs, SST-2 and CoLA sentences from the dev files. Every figure is a ratio measured in one
run, the compared calls timed in turns so that machine drift hits them alike.

    python benchmarks/bench_serving.py                    # both bases
    python benchmarks/bench_serving.py --bases minilm --json results/bench_serving.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bitfit_utils import parameter_groups  # noqa: E402
from benchmarks.bench_bitfit import machine  # noqa: E402
from lab.data import task_dev  # noqa: E402
from lab.models import OFFLINE_MODEL, load_model  # noqa: E402
from lab.tasks import SERVED_TASKS, get_task  # noqa: E402
from lab.serving import MultiTaskBitFit, base_fingerprint, encode_requests  # noqa: E402
from lab.task_packs import synthetic_pack  # noqa: E402

DATA = Path(os.environ.get("BITFIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mrpc")).parent
#: The served tasks, in the order the request stream cycles through them: 02's MRPC, then 03's others.
TASKS = ("mrpc", *SERVED_TASKS)


def request_stream(n: int, data: Path | None = DATA) -> list[tuple[str, str | tuple[str, str]]]:
    """``n`` requests cycling through ``TASKS`` (MRPC pairs, SST-2 and CoLA sentences) from the GLUE dev sets.

    Read by ``lab.data.task_dev`` through each task's spec (``data``: the folder holding the tasks'
    offline folders; None: ``lab.data``'s own rules, the Hub included).
    """
    streams = [[(task, x) for x in task_dev(task, data / get_task(task).folder if data else None)[0]]
               for task in TASKS]
    return [streams[i % len(TASKS)][i // len(TASKS)] for i in range(n)]


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls (one untimed warm-up first)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def build_base(name: str):
    """``(model, tokenizer)``: the offline MiniLM, or BERT-base's shape with random weights (MiniLM's
    tokenizer: the same 30,522-token uncased vocabulary)."""
    model, tokenizer = load_model(OFFLINE_MODEL, verbose=False)
    if name == "bert-base-shape":
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    return model.eval(), tokenizer


def max_prob_difference(server: MultiTaskBitFit, batch: dict, tasks: list[str]) -> float:
    """Largest |probability difference| between the mixed pass and each task's own plain forward."""
    mixed = server.forward_mixed(**batch, task_ids=tasks)
    worst = 0.0
    for task in TASKS:
        rows = [i for i, t in enumerate(tasks) if t == task]
        server.switch(task)
        with torch.no_grad():
            own = server.model(**{k: v[rows] for k, v in batch.items()}).logits.softmax(-1)
        for j, i in enumerate(rows):
            worst = max(worst, float((mixed[i].softmax(-1) - own[j]).abs().max()))
    return worst


def bench_base(name: str, requests, rounds: int, switches: int) -> dict:
    model, tokenizer = build_base(name)
    frozen_not = [n for n, g in parameter_groups(model).items() if g != "frozen"]  # biases and head
    fingerprint = base_fingerprint(model, frozen_not, full=True)  # hashed once for the three packs
    packs = {task: synthetic_pack(model, task, num_labels=len(get_task(task).label_names), seed=i,
                                  fingerprint=fingerprint) for i, task in enumerate(TASKS)}
    server = MultiTaskBitFit(model, packs)
    batch = encode_requests(requests, tokenizer)
    tasks = [t for t, _ in requests]
    order = list(TASKS)

    def plain():
        with torch.no_grad():
            model(**batch)

    state = {"i": 0}

    def one_switch():
        state["i"] += 1
        server.switch(order[state["i"] % len(order)])

    switch_ms = median_ms(one_switch, switches)
    server.switch("mrpc")
    times = {"plain": [], "mixed": []}
    for _ in range(rounds):  # in turns: drift hits both alike
        times["plain"].append(median_ms(plain, 1))
        times["mixed"].append(median_ms(lambda: server.forward_mixed(**batch, task_ids=tasks), 1))
    plain_ms, mixed_ms = (float(np.median(times[k])) for k in ("plain", "mixed"))
    memory = server.memory_report()
    return {
        "base": name, "batch": len(requests), "tokens_per_example": int(batch["input_ids"].shape[1]),
        "switch_ms": switch_ms, "switch_over_forward": switch_ms / plain_ms,
        "plain_forward_ms": plain_ms, "mixed_forward_ms": mixed_ms, "mixed_throughput_ratio": plain_ms / mixed_ms,
        "max_prob_difference": max_prob_difference(server, batch, tasks),
        "served_mb": memory["served_bytes"] / 1e6, "full_models_mb": memory["full_models_bytes"] / 1e6,
        "memory_ratio": memory["ratio"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["minilm", "bert-base-shape"], choices=["minilm", "bert-base-shape"])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of plain vs mixed forward (median)")
    parser.add_argument("--switches", type=int, default=60, help="timed switches (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    requests = request_stream(args.requests)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {machine(torch.device('cpu'))}, torch {torch.__version__}; load average at the start {load:.1f} "
          "(other work sharing the machine makes every time longer)")
    print(f"One base + 3 SYNTHETIC packs ({', '.join(TASKS)}: perturbed biases, random heads; nothing trained). "
          f"{args.requests} mixed requests (MRPC pairs, SST-2 and CoLA sentences), torch threads: {args.threads}.")
    results = []
    for base in args.bases:
        r = bench_base(base, requests, args.rounds, args.switches)
        results.append(r)
        print(f"\n[{r['base']}] batch {r['batch']} x {r['tokens_per_example']} tokens")
        print(f"  switch:             {r['switch_ms']:.2f} ms (median of {args.switches}) = "
              f"{r['switch_over_forward']:.4f} x one forward of the batch ({r['plain_forward_ms']:.0f} ms)")
        print(f"  mixed-batch pass:   {r['mixed_forward_ms']:.0f} ms vs single-task plain forward "
              f"{r['plain_forward_ms']:.0f} ms: throughput {r['mixed_throughput_ratio']:.2f}x (target >= 0.9x)")
        print(f"  max |prob diff| mixed vs per-task runs: {r['max_prob_difference']:.2e} (limit 1e-5)")
        print(f"  memory: one base + 3 packs {r['served_mb']:.1f} MB vs 3 full models {r['full_models_mb']:.1f} MB "
              f"({r['memory_ratio']:.3f}x)")
    end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n# load average at the end {end:.1f}")
    report = {"machine": machine(torch.device("cpu")), "torch": torch.__version__, "load_average_1min": [load, end],
              "threads": args.threads, "requests": args.requests, "synthetic_packs": True, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
