"""The lab handout's two recipes, reproduced as written so the lab can show what they really do.

``02-Train.ipynb`` section 7 prints this code and counts what each recipe leaves trainable;
``benchmarks/compare_methods.py`` trains both (methods ``handout_bitfitlora`` and ``adaptive_init``).
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
