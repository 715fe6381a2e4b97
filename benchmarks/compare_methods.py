"""A measured comparison of BitFit with other ways to fine-tune, on MRPC.

Each (method, seed, train fraction) run happens in its own process (so its peak
memory is its own) and writes results/runs/<run>.json the moment it ends; the
runner skips runs whose file exists, so the study can be done in pieces.

    python benchmarks/compare_methods.py --quick        # smoke test (CI), ~2 min
    python benchmarks/compare_methods.py                # the full study (hours on a CPU)
    python benchmarks/compare_methods.py --part main    # only the method table (also: curve, groups)
    python benchmarks/compare_methods.py --report       # rebuild CSV, markdown and plots from finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bitfit_utils as bu  # noqa: E402
from benchmarks.handout_recipes import HandoutBitFitLoRA, handout_adaptive_bias_initialization  # noqa: E402
from benchmarks.study_tools import mask_gradients, peak_rss, random_parameter_mask  # noqa: E402

# name: (learning rate, epochs, why). Every parameter-efficient method gets the same 7 epochs
# (805 steps at batch 32), 02-Train's BitFit budget; frozen and full FT keep 02-Train's 3 epochs.
METHODS = {
    "frozen": (1e-3, 3, "02-Train's setting: only the head learns; a large rate is safe for one linear layer"),
    "bitfit": (1e-3, 7, "02-Train's setting: biases need ~20x the full-FT rate; >= 3e-3 stalled at the "
                        "majority class on this model in calibration runs"),
    "bitfit_qi": (1e-3, 7, "same as BitFit"),
    "bitfit_ln": (1e-3, 7, "same as BitFit; LayerNorm gains are 1-D vectors like biases"),
    "random": (1e-3, 7, "same budget and rate as BitFit, random scalars instead of biases"),
    "lora": (5e-4, 7, "a usual LoRA rate for BERT-size encoders (LoRA paper: 4e-4 to 5e-4 on GLUE)"),
    "bitfit_lora": (5e-4, 7, "LoRA's rate; biases also train through LoraConfig(bias='all')"),
    "handout_bitfitlora": (5e-4, 7, "the handout's class as written (its biases end up frozen)"),
    # BEFT (peft's BeftConfig) adds a zero vector b' to a Linear layer's output, y = W x + b + b': b' gets
    # exactly the bias gradient, and with Adam and no weight decay its steps are the ones BitFit takes on
    # b (tests/test_families.py checks one step). So BitFit's rate is the equal-budget choice.
    "beft": (1e-3, 7, "BitFit's rate: BEFT trains additive bias vectors (peft's default targets: the value "
                      "projections)"),
    "beft_all": (1e-3, 7, "BitFit's rate: BEFT vectors on every attention/FFN Linear layer, i.e. BitFit "
                          "without the LayerNorm and pooler biases"),
    "full": (5e-5, 3, "02-Train's setting: the usual full fine-tuning rate for BERT-size encoders"),
    "adaptive_init": (1e-3, 7, "BitFit's setting, after the handout's adaptive_bias_initialization"),
}
SEEDS = (0, 1, 2)
GROUP_SEEDS = SEEDS  # seed 0 ran on the 2-core CPU (~9 min a run), seeds 1-2 on a GPU
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
BATCH_SIZE = 32
RESULTS = ROOT / "results"


def setup(model, method: str, seed: int, groups: list[str] | None = None):
    """Prepare ``model`` for ``method``; return (model to train, trainable scalar count)."""
    if groups is not None:
        bu.apply_bitfit(model, groups)
    elif method in ("frozen", "full", "bitfit"):
        bu.setup_method(model, method)
    elif method == "bitfit_qi":
        bu.apply_bitfit(model, ["query", "intermediate"])
    elif method == "bitfit_ln":
        bu.apply_bitfit(model)
        for name, module in model.named_modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.requires_grad = True
    elif method == "random":
        bitfit_count = bu.apply_bitfit(model).trainable
        groups = bu.parameter_groups(model)
        head = [p for n, p in model.named_parameters() if groups[n] == "head"]
        head_count = sum(p.numel() for p in head)
        model.requires_grad_(False)
        masks = random_parameter_mask(model, bitfit_count - head_count, seed=seed)
        mask_gradients(model, masks)
        for p in head:
            p.requires_grad = True
        return model, sum(int(m.sum()) for m in masks.values()) + head_count
    elif method == "lora":
        model = bu.apply_lora(model, bias="none")
    elif method == "bitfit_lora":
        model = bu.apply_lora(model, bias="all")
    elif method == "beft":
        model = bu.apply_beft(model)
    elif method == "beft_all":
        model = bu.apply_beft(model, bu.BEFT_BERT_ALL_LINEAR)
    elif method == "handout_bitfitlora":
        model = HandoutBitFitLoRA(model).peft_model
    elif method == "adaptive_init":
        bu.apply_bitfit(model)
        handout_adaptive_bias_initialization(model, "classification")
    else:
        raise ValueError(f"unknown method {method!r}")
    return model, bu.count_parameters(model)[0]


def checkpoint_bytes(model, method: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        if method in ("lora", "bitfit_lora", "handout_bitfitlora", "beft", "beft_all"):
            model.save_pretrained(folder)  # the adapter only (with the head, for SEQ_CLS)
            return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        if method in ("full", "random"):
            return int(bu.full_model_size_mb(model) * 1e6)  # a random mask touches whole tensors
        if method == "bitfit_ln":  # LayerNorm gains are not biases: store the trainable tensors directly
            from safetensors.torch import save

            return len(save({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}))
        return bu.save_bias_checkpoint(model, Path(folder) / "p.safetensors").stat().st_size


def run_one(spec: dict, quick: bool, jobs: int = 1) -> dict:
    """Train one configuration and return its measurements (``jobs``: runs sharing the machine meanwhile)."""
    bu.set_seed(spec["seed"])
    data = bu.load_mrpc()
    model, tokenizer = bu.load_model(bu.OFFLINE_MODEL, verbose=False)
    total = bu.count_parameters(model)[1]
    model, trainable = setup(model, spec["method"], spec["seed"], spec.get("groups"))
    encoded = bu.tokenize_pairs(data, tokenizer)
    pool = 64 if quick else len(encoded["train"])
    n_train = int(round(spec["fraction"] * pool))
    train = encoded["train"].shuffle(seed=spec["seed"]).select(range(n_train))
    dev = encoded["validation"].select(range(64)) if quick else encoded["validation"]
    lr, epochs, _ = METHODS[spec["method"]]
    epochs = 1 if quick else epochs
    overrides = {}
    if spec["fraction"] < 1:
        # A smaller train set gets the same optimizer steps, schedule and evaluation points as the full-data
        # run (epochs x full-data epoch length); with a fixed epoch count 10 % of MRPC would get 84 steps.
        full_epoch = math.ceil(pool / BATCH_SIZE)
        overrides = {"max_steps": epochs * full_epoch}
        for kind in ("eval", "save", "logging"):
            overrides.update({f"{kind}_strategy": "steps", f"{kind}_steps": full_epoch})
    with tempfile.TemporaryDirectory() as out:
        trainer = bu.make_trainer(model, tokenizer, train, dev, out, learning_rate=lr, epochs=epochs,
                                  batch_size=BATCH_SIZE, seed=spec["seed"], disable_tqdm=True, **overrides)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate()
    return {**spec, "lr": lr, "epochs": epochs, "steps": trainer.state.global_step, "train_pairs": n_train,
            "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
            "checkpoint_bytes": checkpoint_bytes(model, spec["method"]),
            "train_s_per_epoch": seconds / epochs,
            "peak_rss_mib": peak_rss() / 2**20,
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "concurrent_runs": jobs,
            **bu._library_versions(),  # torch, transformers, safetensors: as in a bias pack's metadata
            "dev_accuracy": 100 * metrics["eval_accuracy"], "dev_f1": 100 * metrics["eval_f1"]}


def plan(part: str, quick: bool) -> list[dict]:
    seeds = SEEDS[:1] if quick else SEEDS
    runs = []
    if part in ("all", "main"):
        runs += [{"part": "main", "method": m, "seed": s, "fraction": 1.0} for s in seeds for m in METHODS]
    if part in ("all", "curve"):
        fractions = (0.5,) if quick else FRACTIONS[:-1]  # --quick: one point, to exercise the code path
        methods = ("bitfit",) if quick else ("bitfit", "full")
        runs += [{"part": "curve", "method": m, "seed": s, "fraction": f}
                 for s in seeds for f in fractions for m in methods]
    if part in ("all", "groups") and not quick:
        runs += [{"part": "groups", "method": "bitfit", "groups": [g], "seed": s, "fraction": 1.0}
                 for s in GROUP_SEEDS for g in bu.BIAS_GROUPS[:10]]
    # seed-major across parts: a study stopped part-way has every method, fraction and group for seed 0 first
    runs.sort(key=lambda r: r["seed"])
    for r in runs:
        r["name"] = "-".join([r["part"], r["method"], *r.get("groups", []), f"s{r['seed']}", f"f{r['fraction']}"])
    return runs


def _cell(value, digits: int | None = None) -> str:
    if isinstance(value, float) and value != value:
        return "–"  # NaN: e.g. the std of a single seed
    if digits is not None:
        return f"{value:,.{digits}f}"  # a fixed number of decimals: 84.0, not 84
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return str(value)


def markdown(table, digits: dict[str, int] | None = None) -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency); ``digits`` fixes decimals per column."""
    digits = digits or {}
    lines = ["| " + " | ".join([table.index.name or "", *map(str, table.columns)]) + " |",
             "|" + "---|" * (len(table.columns) + 1)]
    lines += ["| " + " | ".join([str(i), *(_cell(v, digits.get(c)) for c, v in zip(table.columns, row))]) + " |"
              for i, row in zip(table.index, table.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def report(folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
    if not rows:
        print("no finished runs yet")
        return
    frame = pd.DataFrame(rows)
    # Run files from before these fields existed were all written by single runs on a CPU.
    for column, default in (("device", "cpu"), ("concurrent_runs", 1)):
        frame[column] = frame[column].fillna(default) if column in frame else default
    frame["concurrent_runs"] = frame["concurrent_runs"].astype(int)  # NaN made it float
    frame.to_csv(folder / "runs.csv", index=False)
    main = frame[frame.part == "main"]
    table = main.groupby("method", sort=False).agg(
        lr=("lr", "first"), epochs=("epochs", "first"), trainable=("trainable", "first"),
        trainable_pct=("trainable_pct", "first"),
        checkpoint_mb=("checkpoint_bytes", lambda b: b.iloc[0] / 1e6), acc_mean=("dev_accuracy", "mean"),
        acc_std=("dev_accuracy", "std"), f1_mean=("dev_f1", "mean"), f1_std=("dev_f1", "std"),
        seeds=("seed", "count"))
    # Time and RSS are only comparable between runs that had the same machine to themselves: they come from
    # CPU runs made one at a time (GPU ones in their own column). CUDA memory is per process, so every GPU run counts.
    on_gpu = main.device != "cpu"
    alone = main.concurrent_runs == 1
    position = table.columns.get_loc("checkpoint_mb") + 1
    for column, runs, field in (("cuda_max_mib", main[on_gpu], "cuda_max_allocated_mib"),
                                ("gpu_s_per_epoch", main[on_gpu & alone], "train_s_per_epoch"),
                                ("peak_rss_mib", main[~on_gpu & alone], "peak_rss_mib"),
                                ("s_per_epoch", main[~on_gpu & alone], "train_s_per_epoch")):
        if not runs.empty:
            table.insert(position, column, runs.groupby("method", sort=False)[field].mean())
    table["devices"] = main.groupby("method", sort=False)["device"].agg(_devices)
    table = table.reindex([m for m in METHODS if m in table.index])  # the order of METHODS
    table.to_csv(folder / "methods.csv")
    (folder / "methods.md").write_text(markdown(table, {
        "trainable_pct": 3, "checkpoint_mb": 3, "s_per_epoch": 1, "gpu_s_per_epoch": 1, "peak_rss_mib": 0,
        "cuda_max_mib": 0,
        "acc_mean": 1, "acc_std": 1, "f1_mean": 1, "f1_std": 1}))
    print(table.round(3).to_string())
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(table.index, table.f1_mean, yerr=table.f1_std.fillna(0))
    ax.set(title="MRPC dev F1 by method (mean ± std over seeds)", xlabel="method", ylabel="dev F1 (%)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(folder / "methods.png", dpi=120)
    plt.close(fig)
    report_curve(frame, folder, plt)
    report_groups(frame, folder)
    report_device_check(frame, folder)


def _devices(devices) -> str:
    """Where a table row's runs ran, e.g. 'cpu x1, NVIDIA H100 80GB HBM3 x2'."""
    return ", ".join(f"{name} x{count}" for name, count in devices.value_counts(sort=False).items())


def _remove_stale(folder: Path, part: str) -> None:
    """No runs of ``part`` (any more): drop its old tables and plot so nothing reports runs that are gone."""
    for suffix in (".csv", ".md", ".png"):
        (folder / f"{part}{suffix}").unlink(missing_ok=True)


def report_curve(frame, folder: Path, plt) -> None:
    """Train-size curve (paper Fig. 2): BitFit vs full FT, dev F1 against the share of MRPC train."""
    if not (frame.part == "curve").any():
        _remove_stale(folder, "curve")
        return
    runs = frame[(frame.part == "curve") | ((frame.part == "main") & frame.method.isin(["bitfit", "full"]))]
    curve = runs.groupby(["method", "fraction"]).agg(f1_mean=("dev_f1", "mean"), f1_std=("dev_f1", "std"),
                                                     acc_mean=("dev_accuracy", "mean"),
                                                     acc_std=("dev_accuracy", "std"), seeds=("seed", "count"),
                                                     devices=("device", _devices))
    curve.to_csv(folder / "curve.csv")
    (folder / "curve.md").write_text(markdown(curve.reset_index().set_index("method"),
                                              {"fraction": 2, "f1_mean": 1, "f1_std": 1, "acc_mean": 1, "acc_std": 1}))
    # F1 beside accuracy: predicting "equivalent" for every pair already scores a high F1 on MRPC, so a point
    # that learned nothing is easier to see in accuracy.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric, label in zip(axes, ("f1", "acc"), ("dev F1 (%)", "dev accuracy (%)")):
        for method, part in curve.reset_index().groupby("method"):
            ax.errorbar(100 * part.fraction, part[f"{metric}_mean"], yerr=part[f"{metric}_std"].fillna(0),
                        marker="o", capsize=3, label=method)
        ax.set(title=f"MRPC {label.split(' (')[0]} vs training-set size", xlabel="% of MRPC train used", ylabel=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "curve.png", dpi=120)
    plt.close(fig)


def report_groups(frame, folder: Path) -> None:
    """BitFit with one bias group at a time, ranked by dev F1 (then accuracy)."""
    runs = frame[frame.part == "groups"].copy()
    if runs.empty:
        _remove_stale(folder, "groups")
        return
    runs["group"] = runs["groups"].map(lambda g: g[0])
    table = runs.groupby("group").agg(trainable=("trainable", "first"), f1_mean=("dev_f1", "mean"),
                                      f1_std=("dev_f1", "std"), acc_mean=("dev_accuracy", "mean"),
                                      acc_std=("dev_accuracy", "std"), seeds=("seed", "count"),
                                      devices=("device", _devices))
    table = table.sort_values(["f1_mean", "acc_mean"], ascending=False)  # accuracy breaks F1 ties
    table.to_csv(folder / "groups.csv")
    (folder / "groups.md").write_text(markdown(table, {"f1_mean": 1, "f1_std": 1, "acc_mean": 1, "acc_std": 1}))


def report_device_check(frame, folder: Path) -> None:
    """Runs repeated on another device (results/device_check/<run>.json) beside the same run in runs/."""
    import pandas as pd

    checks = [json.loads(p.read_text()) for p in sorted((folder / "device_check").glob("*.json"))]
    if not checks:
        return
    runs = frame.set_index("name")
    rows = []
    for check in checks:
        first = runs.loc[check["name"]]
        rows.append({"run": check["name"], "device_a": first["device"], "acc_a": first["dev_accuracy"],
                     "f1_a": first["dev_f1"], "device_b": check["device"], "acc_b": check["dev_accuracy"],
                     "f1_b": check["dev_f1"], "acc_diff": check["dev_accuracy"] - first["dev_accuracy"],
                     "f1_diff": check["dev_f1"] - first["dev_f1"]})
    table = pd.DataFrame(rows).set_index("run")
    table.to_csv(folder / "device_check.csv")
    (folder / "device_check.md").write_text(markdown(table, {c: 2 for c in table.columns if c[:3] in ("acc", "f1_")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=["all", "main", "curve", "groups"], default="all")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (for a GPU with room to spare; their times are then not reported)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one run, one file
        spec = json.loads(args.run)
        result = run_one(spec, args.quick, args.jobs)
        path = args.out / "runs" / f"{spec['name']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        return
    if not args.report:
        (args.out / "runs").mkdir(parents=True, exist_ok=True)
        todo = [s for s in plan(args.part, args.quick) if not (args.out / "runs" / f"{s['name']}.json").exists()]

        def start(spec: dict) -> None:
            print(f"run {spec['name']}", flush=True)
            cmd = [sys.executable, __file__, "--run", json.dumps(spec), "--out", str(args.out), "--jobs", str(args.jobs)]
            subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(start, todo))  # list(): re-raises the first failed run
    report(args.out)


if __name__ == "__main__":
    main()
