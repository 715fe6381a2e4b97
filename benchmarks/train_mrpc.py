"""02-Train's BitFit training path as a script, for `accelerate launch` (multi-GPU, multi-node).

    python benchmarks/train_mrpc.py --quick
    accelerate launch --num_processes 2 benchmarks/train_mrpc.py          # 2 GPUs
    torchrun --nproc_per_node 2 benchmarks/train_mrpc.py                  # 2 CPU processes (gloo)

Same rule as 02: trains on the lab's train split, keeps the epoch with the best validation MCC and
reports MRPC dev at that epoch. Learning rate and most epochs default to 02's (the study's choice where
it has chosen). Trainer picks up the distributed setup from accelerate; nothing here is distributed by hand.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bitfit_utils as bu  # noqa: E402
from lab import packs  # noqa: E402
from lab.data import load_mrpc, selection_splits, training_sets  # noqa: E402
from lab.models import get_device, load_model  # noqa: E402
from lab.recipe import run_settings  # noqa: E402
from lab.training import kept_row, make_trainer, set_seed, timer  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Train BitFit on MRPC, write its pack under ``--out``; returns the kept epoch's history row."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 training pairs, one epoch")
    parser.add_argument("--model", default=None, help="default: bert-base-uncased, offline the MiniLM")
    parser.add_argument("--lr", type=float, default=None, help="default: 02's BitFit learning rate")
    parser.add_argument("--epochs", type=float, default=None, help="default: 02's most BitFit epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--data-dir", default=None, help="a GLUE MRPC folder (default: BITFIT_DATA_DIR, else the Hub)")
    parser.add_argument("--out", default="runs/script")
    args = parser.parse_args(argv)

    run = run_settings(args.quick, False, args.model, get_device().type, batch_size=args.batch_size)
    set_seed(42)
    model, tokenizer = load_model(run.model_name)
    print(bu.apply_bitfit(model))
    train_set, eval_sets = training_sets(selection_splits(load_mrpc(args.data_dir)), tokenizer,
                                         subset=run.train_subset)
    trainer = make_trainer(model, tokenizer, train_set, eval_sets, args.out,
                           learning_rate=args.lr or run.lr["bitfit"], epochs=args.epochs or run.epochs["bitfit"],
                           batch_size=args.batch_size, disable_tqdm=True)
    with timer() as t:
        trainer.train()
    kept = kept_row(trainer)
    if trainer.is_world_process_zero():
        print(f"processes {trainer.args.world_size}: kept epoch {kept.name:g} (validation MCC "
              f"{kept['eval_validation_mcc']:.3f}); dev accuracy {kept['eval_dev_accuracy']:.4f} "
              f"F1 {kept['eval_dev_f1']:.4f}; training {t['seconds']:.1f} s")
        packs.save_bias_checkpoint(model, Path(args.out) / "mrpc_bitfit.safetensors", task="mrpc",
                                dev_accuracy=float(kept["eval_dev_accuracy"]), dev_f1=float(kept["eval_dev_f1"]))
    return kept


if __name__ == "__main__":
    main()
