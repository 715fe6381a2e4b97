"""The lab handout's two recipes, reproduced as written so the lab can show what they really do.

``02-Train.ipynb`` prints this code and counts what each recipe leaves trainable;
the study (``lab/registry.py``) trains both (methods ``handout_bitfitlora`` and ``adaptive_init``).
Neither is meant to be used: the lab's own ways are ``lab.methods.apply_lora(model, bias="all")``
and ``bitfit_utils.apply_bitfit``.
"""

from __future__ import annotations

from torch import nn

from lab.methods import get_peft_model_quietly  # peft.get_peft_model, minus a FutureWarning of transformers 5


class HandoutBitFitLoRA(nn.Module):
    """The lab handout's ``BitFitLoRA`` class, reproduced as written. Do not use it.

    It freezes every non-bias weight (the head's weight too), then calls
    ``get_peft_model`` with a default ``LoraConfig``, which freezes every
    non-LoRA parameter again: no bias and no part of the head stays trainable.
    """

    def __init__(self, base_model: nn.Module, lora_r: int = 4):
        from peft import LoraConfig

        super().__init__()
        self.base_model = base_model
        for name, param in base_model.named_parameters():
            if ".bias" not in name:
                param.requires_grad = False
        lora_config = LoraConfig(r=lora_r, target_modules=["query", "value"])
        self.peft_model = get_peft_model_quietly(self.base_model, lora_config)  # the handout: get_peft_model(...)

    def forward(self, **inputs):
        return self.peft_model(**inputs)


def handout_adaptive_bias_initialization(model: nn.Module, task_type: str) -> None:
    """The lab handout's "adaptive bias initialisation", reproduced. Do not use it.

    It draws every trainable bias afresh from N(0, 0.01) (classification), i.e.
    it throws away the pre-trained biases BitFit is meant to fine-tune.
    """
    strategies = {"classification": {"std": 0.01, "mean": 0.0}, "generation": {"std": 0.02, "mean": 0.1}}
    strategy = strategies.get(task_type, {"std": 0.01, "mean": 0.0})
    for name, param in model.named_parameters():
        if ".bias" in name and param.requires_grad:
            nn.init.normal_(param, mean=strategy["mean"], std=strategy["std"])


# ----- what the two recipes do, counted on a fresh model (02's section 7) --------------------------------------


def trainable_by_recipe(load_fresh_model, lora_r: int = 4):
    """Trainable parameters per group: LoRA alone, BitFit + LoRA done right, and the handout's class.

    ``load_fresh_model()`` returns a newly loaded pre-trained model; each recipe gets its own.
    """
    import pandas as pd

    from lab.methods import apply_lora, parameter_table

    recipes = {"LoRA (bias='none')": lambda m: apply_lora(m, r=lora_r, bias="none"),
               "BitFit + LoRA (bias='all')": lambda m: apply_lora(m, r=lora_r, bias="all"),
               "handout's BitFitLoRA": lambda m: HandoutBitFitLoRA(m, lora_r=lora_r).peft_model}
    table = {name: parameter_table(wrap(load_fresh_model()))["trainable"] for name, wrap in recipes.items()}
    return pd.DataFrame(table).drop(index="frozen")


def adaptive_init_effect(model: nn.Module, seed: int):
    """Per bias group of a pre-trained ``model``: mean |b| before and after the handout's initialisation,
    and the correlation between the two (1: kept, 0: unrelated). The model's biases are overwritten."""
    import pandas as pd
    import torch

    import bitfit_utils as bu
    from lab.training import set_seed

    bu.apply_bitfit(model)
    group_of = bu.parameter_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if group_of[n] in bu.BIAS_GROUPS}
    set_seed(seed)  # the handout's init draws random numbers
    handout_adaptive_bias_initialization(model, "classification")
    after = dict(model.named_parameters())
    rows = []
    for group in bu.BIAS_GROUPS:
        names = [n for n in before if group_of[n] == group]
        if names:
            b0 = torch.cat([before[n].flatten() for n in names])
            b1 = torch.cat([after[n].detach().flatten() for n in names])
            rows.append({"group": group, "pre-trained mean |b|": b0.abs().mean().item(),
                         "after the handout's init": b1.abs().mean().item(),
                         "correlation before/after": torch.corrcoef(torch.stack([b0, b1]))[0, 1].item()})
    return pd.DataFrame(rows).set_index("group")
