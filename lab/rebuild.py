"""What 02's exercises need from sections 0-1, rebuilt after a kernel restart (seconds, nothing trained)."""

from __future__ import annotations

import os

from lab.heads import set_pooling
from lab.models import load_model
from lab.recipe import STUDY_DIR, head_for, read_recipe
from lab.tasks import DEFAULT_MAX_LENGTH
from lab.training import set_seed


def rebuild_for_02(run, data_dir, seed: int, max_length: int = DEFAULT_MAX_LENGTH,
                   results_dir: str | os.PathLike = STUDY_DIR):
    """02's sections 0-1 again: the model (same seeded head, read the study's way), tokenizer, splits, sets and
    BitFit's step cost.

    Args:
        run: 02's ``RunSettings`` (``lab.recipe.run_settings``).
        data_dir: MRPC's folder (None: the Hub or its cache), as 02's ``DATA_DIR``.
        seed: 02's ``SEED``: the new classifier head is drawn at load time.
        max_length: tokens per pair.
        results_dir: the study's folder: its ``recipe.json`` gives the head, as 02's section 0 reads it
            (``head_for`` then ``lab.heads.set_pooling``).

    Returns ``(model, tokenizer, splits, train_set, eval_sets, costs)``, as those sections leave them.
    """
    from lab.data import load_mrpc, selection_splits, training_sets
    from lab.timing import measure_step_costs

    set_seed(seed)
    model, tokenizer = load_model(run.model_name, verbose=False)
    set_pooling(model, head_for(model, read_recipe(results_dir)))  # 02's HEAD
    splits = selection_splits(load_mrpc(data_dir))
    train_set, eval_sets = training_sets(splits, tokenizer, max_length, run.train_subset, seed,
                                         eval_subset=run.eval_subset)
    costs = measure_step_costs(model, tokenizer, splits["train"], ("bitfit",), batch_size=run.batch_size,
                               max_length=max_length, bf16=run.bf16)
    return model, tokenizer, splits, train_set, eval_sets, costs
