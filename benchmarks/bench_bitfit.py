"""BitFit vs full fine-tuning: step time, memory, inference latency, pack switching.

Every figure is a ratio measured in one run, with the methods interleaved so that
machine drift hits all of them alike.

    python benchmarks/bench_bitfit.py            # full run (minutes on a laptop CPU)
    python benchmarks/bench_bitfit.py --quick    # smoke test for CI
    python benchmarks/bench_bitfit.py --epoch    # also one real Trainer epoch on MRPC per recipe
    python benchmarks/bench_bitfit.py --quick --pack-only   # only the pack switch, MiniLM and BERT-base shapes
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bitfit_utils as bu  # noqa: E402
from lab import packs  # noqa: E402
from lab.analysis import full_model_size_mb, median_latency
from lab.data import load_mrpc, tokenize_pairs
from lab.methods import setup_method
from lab.models import OFFLINE_MODEL, get_device, load_model, offline_model_path
from lab.training import make_trainer, set_seed, timer
from study.tools import peak_rss  # noqa: E402

# "plain": BitFit selected by parameter name in plain PyTorch, to show bitfit_utils' path costs the same.
METHODS = {"full": None, "bitfit": "all", "bitfit_qi": ["query", "intermediate"], "plain": "by-name"}
# glibc keeps freed heap memory and moves its mmap threshold up, so peak RSS would mostly show the
# allocator's history; fixed thresholds make RSS follow the live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def build(shape: str, quick: bool, dropout: bool = True):
    """A classifier of the given shape: the offline MiniLM (real weights) or BERT-base (random)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if shape == "minilm":
        config = BertConfig.from_pretrained(offline_model_path(), num_labels=2)
        if quick or not dropout:
            model = BertForSequenceClassification(config)
        else:
            model, _ = load_model(OFFLINE_MODEL, verbose=False)
    else:
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    if not dropout:  # the same model without dropout: shows what the dropout masks cost both methods
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # BERT's attention passes self.dropout.p to SDPA as well
    return model


def prepare(model, method: str):
    """Set requires_grad for a method; return an AdamW over the trainable parameters only."""
    if METHODS[method] is None:
        setup_method(model, "full")
    elif METHODS[method] == "by-name":
        for name, param in model.named_parameters():
            param.requires_grad = name.endswith(".bias") or name.startswith("classifier.")
    else:
        bu.apply_bitfit(model, METHODS[method])
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def batch(bs: int, seq: int, device):
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1000, 30000, (bs, seq), generator=gen).to(device),
            "attention_mask": torch.ones(bs, seq, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (bs,), generator=gen).to(device)}


def step(model, optimizer, inputs, amp: bool):
    with torch.autocast(inputs["input_ids"].device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(shape, bs, seq, repeats, quick, device, amp=False, methods=tuple(METHODS),
               dropout=True) -> dict[str, float]:
    """Median training-step time per method, interleaved."""
    base = build(shape, quick, dropout)
    setups = {}
    for method in methods:
        model = copy.deepcopy(base).to(device).train()
        setups[method] = (model, prepare(model, method))
    inputs = batch(bs, seq, device)
    for model, opt in setups.values():  # warm up: allocator, optimizer state
        for _ in range(2):
            step(model, opt, inputs, amp)
    times = {m: [] for m in methods}
    for _ in range(repeats):
        for method, (model, opt) in setups.items():
            sync(device)
            start = time.perf_counter()
            step(model, opt, inputs, amp)
            sync(device)
            times[method].append(time.perf_counter() - start)
    return {m: 1000 * float(np.median(t)) for m, t in times.items()}


def memory_accounting(model, opt, inputs, amp: bool = False) -> dict[str, int]:
    """Bytes a training step keeps alive, by kind, independent of any allocator.

    activations: tensors autograd saves for the backward pass (parameters excluded),
    gradients: ``.grad`` of every parameter, optimizer: the optimizer's state tensors.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(inputs["input_ids"].device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(**inputs).loss
    loss.backward()
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    opt.step()
    state = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    opt.zero_grad(set_to_none=True)
    return {"activations": sum(saved.values()), "gradients": grads, "optimizer": state}


def memory_child(shape: str, method: str, bs: int, seq: int, quick: bool, dropout: bool = True) -> None:
    """Run in a fresh process: RSS after loading, the peak during training, and the accounting (bytes)."""
    importlib.import_module("pandas")  # apply_bitfit imports it: load it first so "loaded" is alike for all
    import psutil

    model = build(shape, quick, dropout).train()
    opt = prepare(model, method)
    inputs = batch(bs, seq, torch.device("cpu"))
    loaded = psutil.Process().memory_info().rss
    peak_rss(reset=True)  # measure the training steps, not the loading
    for _ in range(3):
        step(model, opt, inputs, amp=False)
    peak = peak_rss()
    print(json.dumps({"loaded": loaded, "peak": peak, **memory_accounting(model, opt, inputs)}))


def cpu_memory(shape, bs, seq, quick, methods=tuple(METHODS), dropout=True) -> dict[str, dict[str, int]]:
    out = {}
    for method in methods:
        cmd = [sys.executable, __file__, "--memory-child", shape, method, str(bs), str(seq), str(int(dropout))]
        cmd += ["--quick"] if quick else []
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
        out[method] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def op_profile(shape, bs, seq, quick, device, methods=("full", "bitfit"), steps=3) -> dict[str, dict[str, float]]:
    """Self time (ms) per operator, mean of ``steps`` steady-state steps per method (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    base = build(shape, quick)
    inputs = batch(bs, seq, device)
    out = {}
    for method in methods:
        model = copy.deepcopy(base).to(device).train()
        opt = prepare(model, method)
        for _ in range(2):
            step(model, opt, inputs, amp=False)
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:  # one cycle; no stderr warning
            for _ in range(steps):
                step(model, opt, inputs, amp=False)
        out[method] = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    return out


def print_profile(prof: dict[str, dict[str, float]], top: int = 6) -> None:
    full, bitfit = prof["full"], prof["bitfit"]
    total = sum(full.values())
    saved = sorted(((full.get(k, 0) - bitfit.get(k, 0), k) for k in full), reverse=True)[:top]
    shared = sorted(((min(full.get(k, 0), bitfit.get(k, 0)), k) for k in full), reverse=True)[:top]
    print(f"  profile, mean step (self CPU ms; full {total:.0f}, BitFit {sum(bitfit.values()):.0f}):")
    print("    BitFit saves : " + ", ".join(f"{k} {v:.0f} ({100 * v / total:.0f} %)" for v, k in saved))
    print("    both pay     : " + ", ".join(f"{k} {v:.0f} ({100 * v / total:.0f} %)" for v, k in shared))


def gpu_memory(shape, bs, seq, amp) -> dict[str, int]:
    out = {}
    for method in METHODS:
        torch.cuda.empty_cache()
        model = build(shape, False).cuda().train()
        opt = prepare(model, method)
        inputs = batch(bs, seq, torch.device("cuda"))
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step(model, opt, inputs, amp)
        out[method] = torch.cuda.max_memory_allocated()
        del model, opt
    return out


def inference_ratio(shape, bs, seq, repeats, quick, device) -> tuple[float, float]:
    base = build(shape, quick).to(device).eval()
    tuned = copy.deepcopy(base)
    bu.apply_bitfit(tuned)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.requires_grad:
                p.add_(0.01)
    inputs = {k: v for k, v in batch(bs, seq, device).items() if k != "labels"}
    t = {"base": [], "bitfit": []}
    pair = [("base", base), ("bitfit", tuned)]
    with torch.inference_mode():
        for i in range(2 * repeats):  # alternate which model goes first, so order effects cancel
            for name, model in pair[:: 1 if i % 2 == 0 else -1]:
                t[name].append(median_latency(lambda: (model(**inputs), sync(device)), repeats=3, warmup=1))
    base_ms, tuned_ms = float(np.median(t["base"])), float(np.median(t["bitfit"]))
    return base_ms, tuned_ms


def pack_switch(shape, quick, repeats=50) -> dict[str, float]:
    """Time switching bias packs on a model that is already loaded and carries a pack.

    Every ``load_bias_checkpoint`` reads the pack, checks its digest and fingerprints the model's
    frozen weights afresh (sampled: 4,096 elements per tensor), then copies the biases and head:
    ``switch_ms`` is the median of ``repeats`` such loads, alternating two packs; ``hash_ms`` is
    the sampled fingerprint alone (its share of a switch), ``full_hash_ms`` the full one
    (``verify="full"``).
    """
    model = build(shape, quick)
    bu.apply_bitfit(model)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for k in range(2):
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(0.01 * (k + 1))
            paths.append(packs.save_bias_checkpoint(model, Path(folder) / f"pack{k}.safetensors", task="bench"))
        loaded = build(shape, quick)
        with timer() as first:
            packs.load_bias_checkpoint(loaded, paths[0])  # the model now carries a pack; not a switch yet
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            packs.load_bias_checkpoint(loaded, paths[(i + 1) % 2])
            times.append(time.perf_counter() - start)
        names = packs.pack_names(loaded)
        hash_ms = median_latency(lambda: packs.base_fingerprint(loaded, names), repeats=max(3, repeats // 5), warmup=1)
        full_ms = median_latency(lambda: packs.base_fingerprint(loaded, names, full=True),
                                 repeats=max(3, repeats // 5), warmup=1)
        return {"first_load_ms": 1000 * first["seconds"], "switch_ms": 1000 * float(np.median(times)),
                "hash_ms": hash_ms, "full_hash_ms": full_ms, "switches": repeats,
                "frozen_bytes": sum(p.nbytes for n, p in loaded.named_parameters() if n not in set(names)),
                "pack_bytes": paths[0].stat().st_size, "full_bytes": int(full_model_size_mb(loaded) * 1e6)}


def print_pack(p: dict[str, float]) -> None:
    print(f"  pack switch                     : {p['switch_ms']:.1f} ms per switch (load of a pack onto a loaded "
          f"model, median of {p['switches']}; of which the sampled fingerprint of the {p['frozen_bytes'] / 1e6:.0f} MB "
          f"of frozen weights {p['hash_ms']:.1f} ms, the full one {p.get('full_hash_ms', float('nan')):.1f} ms; "
          f"first load {p['first_load_ms']:.0f} ms)")
    print(f"  pack / full checkpoint bytes    : {100 * p['pack_bytes'] / p['full_bytes']:.3f} % "
          f"({p['pack_bytes']:,} / {p['full_bytes']:,})")


def trainer_epochs(quick: bool) -> dict[str, float]:
    """One epoch of the lab's Trainer path per recipe on MRPC (the offline model)."""
    data = load_mrpc()
    results = {}
    recipes = {  # name: (method, batch size, pad to 128?, group by length?)
        "full_ft": ("full", 32, False, True),
        "bitfit": ("bitfit", 32, False, True),
        "bitfit_original_recipe": ("bitfit", 8, True, False),
    }
    for name, (method, bs, pad128, grouped) in recipes.items():
        set_seed(0)
        model, tokenizer = load_model(OFFLINE_MODEL, verbose=False)
        setup_method(model, method)
        train = data["train"].select(range(128)) if quick else data["train"]
        if pad128:
            train = train.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=128,
                                                  padding="max_length"), batched=True,
                              remove_columns=["sentence1", "sentence2", "idx"])
        else:
            train = tokenize_pairs(train, tokenizer)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trainer(model, tokenizer, train, None, out, learning_rate=1e-3, epochs=1, batch_size=bs,
                                      select_by=None, group_by_length=grouped, eval_strategy="no",
                                      disable_tqdm=True)
            with timer() as t:
                trainer.train()
        results[name] = t["seconds"]
    return results


def machine(device) -> str:
    """CPU (model name where Linux tells it), core count and accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    hardware = f"cuda: {torch.cuda.get_device_name()}" if device.type == "cuda" else str(device)
    return f"{cpu}, {os.cpu_count()} cores, {hardware}"


def pack_only(args, device) -> None:
    """``--pack-only``: the pack switch alone, on both shapes by default."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {"machine": machine(device), "torch": torch.__version__, "load_average_1min": load, "shapes": {}}
    print(f"# BitFit pack switch on {results['machine']} (torch {torch.__version__}), fp32; "
          f"load average at the start {load:.1f} (other work sharing the machine makes every time longer)")
    for shape in args.shapes if args.shapes is not None else ["minilm", "bert-base"]:
        print(f"\n## {shape}")
        results["shapes"][shape] = {"pack": pack_switch(shape, args.quick, repeats=10 if args.quick else 50)}
        print_pack(results["shapes"][shape]["pack"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny smoke test (CI)")
    parser.add_argument("--epoch", action="store_true", help="also time one Trainer epoch per recipe on MRPC")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--shapes", nargs="*", choices=["minilm", "bert-base"], help="which model shapes to run")
    parser.add_argument("--pack-only", action="store_true",
                        help="only the pack switch (on MiniLM and BERT-base shapes unless --shapes)")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        shape, method, bs, seq, dropout = args.memory_child
        memory_child(shape, method, int(bs), int(seq), args.quick, dropout == "1")
        return

    device = get_device()
    if args.pack_only:
        pack_only(args, device)
        return
    bs, seq = (8, 32) if args.quick else (32, 128)
    repeats = 3 if args.quick else 10
    shapes = args.shapes if args.shapes is not None else (["minilm"] if args.quick else ["minilm", "bert-base"])
    results = {"machine": machine(device),
               "torch": torch.__version__, "batch": bs, "seq_len": seq, "shapes": {}}
    print(f"# BitFit benchmark on {results['machine']} (torch {torch.__version__}), batch {bs}, length {seq}, fp32")
    for shape in shapes:
        r = results["shapes"][shape] = {}
        r["step_ms"] = step_times(shape, bs, seq, repeats, args.quick, device)
        s = r["step_ms"]
        print(f"\n## {shape}\nstep time (ms): " + ", ".join(f"{m} {v:.1f}" for m, v in s.items()))
        print(f"  ratio BitFit / full FT          : {s['bitfit'] / s['full']:.3f}")
        print(f"  ratio BitFit(q+i) / full FT     : {s['bitfit_qi'] / s['full']:.3f}")
        print(f"  ratio plain-PyTorch BitFit / ours: {s['plain'] / s['bitfit']:.3f}")
        r["step_ms_no_dropout"] = d = step_times(shape, bs, seq, max(3, repeats // 2), args.quick, device,
                                                 methods=("full", "bitfit"), dropout=False)
        print(f"  without dropout, BitFit / full  : {d['bitfit'] / d['full']:.3f} "
              f"({d['bitfit']:.1f} / {d['full']:.1f} ms)")
        r["profile_ms"] = prof = op_profile(shape, bs, seq, args.quick, device)
        print_profile(prof)
        if device.type == "cuda":
            r["step_ms_bf16"] = b = step_times(shape, bs, seq, repeats, False, device, amp=True)
            print(f"  bf16 autocast: BitFit / full FT  : {b['bitfit'] / b['full']:.3f}")
            r["gpu_peak"] = g = gpu_memory(shape, bs, seq, amp=False)
            print(f"  peak memory BitFit / full FT    : {g['bitfit'] / g['full']:.3f} "
                  f"({g['bitfit'] / 2**20:.0f} / {g['full'] / 2**20:.0f} MiB)")
        else:
            r["cpu_rss"] = m = cpu_memory(shape, bs, seq, args.quick)
            above = {k: v["peak"] - v["loaded"] for k, v in m.items()}
            print(f"  training memory above loaded model, BitFit / full FT: {above['bitfit'] / above['full']:.3f} "
                  f"({above['bitfit'] / 2**20:.0f} / {above['full'] / 2**20:.0f} MiB; "
                  f"peak RSS {m['bitfit']['peak'] / 2**20:.0f} / {m['full']['peak'] / 2**20:.0f} MiB)")
            kept = {k: v["activations"] + v["gradients"] + v["optimizer"] for k, v in m.items()}
            print(f"  memory a step keeps, BitFit / full FT: {kept['bitfit'] / kept['full']:.3f} (MiB: " + "; ".join(
                f"{k} activations {m[k]['activations'] / 2**20:.0f} + gradients {m[k]['gradients'] / 2**20:.1f} "
                f"+ optimizer {m[k]['optimizer'] / 2**20:.1f}" for k in ("full", "bitfit")) + ")")
            r["cpu_rss_no_dropout"] = n = cpu_memory(shape, bs, seq, args.quick, ("full", "bitfit"), dropout=False)
            above = {k: v["peak"] - v["loaded"] for k, v in n.items()}
            print(f"  without dropout, memory above loaded model: {above['bitfit'] / above['full']:.3f} "
                  f"({above['bitfit'] / 2**20:.0f} / {above['full'] / 2**20:.0f} MiB)")
        base_ms, tuned_ms = inference_ratio(shape, bs, seq, repeats, args.quick, device)
        r["inference_ms"] = {"base": base_ms, "bitfit": tuned_ms}
        print(f"  inference BitFit / base         : {tuned_ms / base_ms:.3f} ({tuned_ms:.1f} / {base_ms:.1f} ms)")
        r["pack"] = pack_switch(shape, args.quick, repeats=10 if args.quick else 50)
        print_pack(r["pack"])
    if args.epoch:
        results["epoch_s"] = e = trainer_epochs(args.quick)
        print("\n## one Trainer epoch on MRPC (offline MiniLM)" + (" [128-pair subset]" if args.quick else ""))
        print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in e.items()))
        print(f"  BitFit / full FT                : {e['bitfit'] / e['full_ft']:.3f}")
        print(f"  BitFit / original BitFit recipe : {e['bitfit'] / e['bitfit_original_recipe']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
