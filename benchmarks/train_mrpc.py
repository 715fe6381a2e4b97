"""02-Train's BitFit training path as a script, for `accelerate launch` (multi-GPU, multi-node).

    python benchmarks/train_mrpc.py --quick
    accelerate launch --num_processes 2 benchmarks/train_mrpc.py          # 2 GPUs
    torchrun --nproc_per_node 2 benchmarks/train_mrpc.py                  # 2 CPU processes (gloo)

Trainer picks up the distributed setup from accelerate; nothing here is distributed by hand.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bitfit_utils as bu  # noqa: E402
from lab.data import load_mrpc, tokenize_pairs
from lab.models import load_model
from lab.training import make_trainer, set_seed, timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 training pairs, one epoch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--out", default="runs/script")
    args = parser.parse_args()

    set_seed(42)
    data = load_mrpc()
    model, tokenizer = load_model()
    print(bu.apply_bitfit(model))
    encoded = tokenize_pairs(data, tokenizer)
    train = encoded["train"].shuffle(seed=42).select(range(256)) if args.quick else encoded["train"]
    trainer = make_trainer(model, tokenizer, train, encoded["validation"], args.out, learning_rate=args.lr,
                              epochs=1 if args.quick else args.epochs, batch_size=args.batch_size,
                              disable_tqdm=True)
    with timer() as t:
        trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        print(f"processes {trainer.args.world_size}: dev accuracy {metrics['eval_accuracy']:.4f} "
              f"F1 {metrics['eval_f1']:.4f}, training {t['seconds']:.1f} s")
        bu.save_bias_checkpoint(model, Path(args.out) / "mrpc_bitfit.safetensors", task="mrpc")


if __name__ == "__main__":
    main()
