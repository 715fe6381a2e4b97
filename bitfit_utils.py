"""BitFit in one file (Ben Zaken, Ravfogel & Goldberg, ACL 2022).

BitFit freezes a pre-trained Transformer and trains only its bias terms (plus the task head).
Read top to bottom:

1. The idea in plain PyTorch (``bitfit_in_plain_pytorch``): a parameter trains if it is a
   bias or belongs to the head.
2. ``apply_bitfit``: the same, with a choice of bias groups and a report.
3. The bias groups: which bias belongs to which module role (``parameter_groups``);
   other architectures' roles are registered from outside (``register_roles``).
4. Counting: ``count_parameters`` and the per-group ``parameter_table``.

This module imports nothing of the lab. Saving the trained biases (``lab.packs``), other
architectures' role tables (``lab.families``), LoRA/BEFT (``lab.methods``) and the rest the
notebooks share live in the ``lab/`` package, one module per concern.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn


def bitfit_in_plain_pytorch(model: nn.Module) -> None:
    """BitFit's whole idea: train a parameter if and only if it is a bias or belongs to the task head.

    The head is everything outside the encoder (``model.base_model_prefix``, e.g. ``bert``).
    ``apply_bitfit(model)`` sets the same flags, and lets you pick bias groups.
    """
    encoder = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        is_bias = name.endswith(".bias")
        is_head = not name.startswith(encoder)
        param.requires_grad = is_bias or is_head


# ----- apply_bitfit -------------------------------------------------------------


@dataclass
class BitFitReport:
    """What ``apply_bitfit`` did: totals, the bias groups that train, one row per group, layers without a bias."""

    trainable: int
    total: int
    bias_terms: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    without_bias: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total

    def to_frame(self):
        """The per-group rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("group")

    def __str__(self) -> str:
        text = (f"BitFit ({', '.join(self.bias_terms)}): {self.trainable:,} of {self.total:,} "
                f"parameters trainable ({self.percent:.4f} %)")
        if self.without_bias:
            text += (f"\n{len(self.without_bias)} selected layer(s) have no bias and train nothing, e.g. "
                     f"{', '.join(self.without_bias[:3])}; apply_bitfit(model, add_missing_biases=True) "
                     "adds zero biases there.")
        return text


def apply_bitfit(
    model: nn.Module,
    bias_terms: str | Sequence[str] = "all",
    train_head: bool = True,
    add_missing_biases: bool = False,
) -> BitFitReport:
    """Freeze ``model`` except the selected bias groups (and the task head).

    Args:
        model: any ``transformers`` model, with or without a task head.
        bias_terms: ``"all"`` (every bias of the encoder, whatever module owns it) or a
            list of names from ``BIAS_GROUPS``; a group named explicitly must exist.
        train_head: also train the task head (everything outside the encoder).
        add_missing_biases: where a selected Linear or LayerNorm was built without a bias
            (ModernBERT, Llama, T5, most of Qwen2), add a zero bias: the model's outputs
            stay exactly the same. RMSNorm-style norms get none (they have no bias term).
            Without it those layers train nothing and the report names them.

    Returns:
        A ``BitFitReport``: ``trainable``, ``total``, ``percent``, ``bias_terms`` (the groups
        whose biases now train), rows and ``without_bias``. The model itself gets no new attribute.

    Raises:
        ValueError: an unknown group, a group the model lacks, or selected groups with no
            bias at all (unless ``add_missing_biases``).
    """
    groups, explicit = _resolve_groups(bias_terms)
    slots = _bias_slots(model)
    present = [g for g in BIAS_GROUPS if any(group == g for _, _, group in slots)]
    if explicit and (absent := [g for g in groups if g not in present]):
        raise ValueError(f"This {type(model).__name__} has no {absent} module(s). Groups it has: {', '.join(present)}.")
    selected = [(path, m) for path, m, g in slots if g in groups]
    missing = [(path, m) for path, m in selected if m.bias is None]
    if len(missing) == len(selected) and not add_missing_biases:
        raise ValueError(
            f"The selected modules of this {type(model).__name__} have no bias at all (e.g. "
            f"'{missing[0][0] if missing else 'none'}'): BitFit has nothing to train. Pass "
            "add_missing_biases=True to add zero biases (outputs unchanged at step 0), or choose other bias_terms."
        )
    if add_missing_biases:
        for _, module in missing:
            dim = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape
            module.bias = nn.Parameter(torch.zeros(dim, dtype=module.weight.dtype, device=module.weight.device))
        missing = []
    group_of = parameter_groups(model)
    trained = set(groups) | ({"head"} if train_head else set())
    for name, param in model.named_parameters():
        param.requires_grad = group_of[name] in trained
    if train_head and "head" not in group_of.values():
        warnings.warn("train_head=True but the model has no task head outside the encoder.")
    # the groups with biases to train (not those whose layers all lack one)
    training = [g for g in groups if any(grp == g and m.bias is not None for _, m, grp in slots)]
    trainable, total = count_parameters(model)
    rows = parameter_table(model, group_of).reset_index().to_dict("records")
    return BitFitReport(trainable, total, training, rows, [path for path, _ in missing])


# ----- The bias groups ----------------------------------------------------------

#: BERT's bias groups, named by the role of the module that owns the bias: BitFit's b_q, b_k,
#: b_v (attention), b_o and its LayerNorm, b_m1 / b_m2 (the FFN's two layers) and LayerNorm,
#: the embeddings' LayerNorm and the pooler. A path inside a layer is what follows its number.
BERT_ROLES: dict[str, str] = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_layernorm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_layernorm",
    "embeddings.LayerNorm": "embeddings_layernorm", "pooler.dense": "pooler",
}
#: Groups of a bias that no role table knows, named by the kind of module that owns it.
GENERIC_GROUPS: tuple[str, ...] = ("other_linear", "other_conv", "other_norm", "other")
#: Every group name ``apply_bitfit`` accepts: BERT's ten, the registered ones, then the generic ones.
#: Read it as ``bitfit_utils.BIAS_GROUPS`` (``register_roles`` extends it).
BIAS_GROUPS: tuple[str, ...] = (*dict.fromkeys(BERT_ROLES.values()), *GENERIC_GROUPS)
_ROLES: dict[str, str] = dict(BERT_ROLES)


def register_roles(roles: Mapping[str, str], groups: Iterable[str] = ()) -> None:
    """Teach BitFit where another architecture's biases sit: module path -> role (group).

    Registering the same path with the same role again does nothing (safe on re-import).

    Args:
        roles: module paths (what follows the layer number, or a whole path outside the layers)
            mapped to a group name: BERT's, a generic one, or one in ``groups``.
        groups: new group names, added to ``BIAS_GROUPS`` before the generic ones.

    Raises:
        ValueError: a role that is no group (add it to ``groups``), or a path already
            registered with another role; nothing is registered then.
    """
    global BIAS_GROUPS
    new = [g for g in dict.fromkeys(groups) if g not in BIAS_GROUPS]
    if unknown := sorted({r for r in roles.values() if r not in BIAS_GROUPS and r not in new}):
        raise ValueError(f"Role(s) {unknown} are no bias group: pass them in groups=[...] too.")
    if clash := [f"{p!r} ({_ROLES[p]} vs {r})" for p, r in roles.items() if _ROLES.get(p, r) != r]:
        raise ValueError(f"Module path(s) already registered with another role: {', '.join(clash)}. "
                         "Give each path one role.")
    _ROLES.update(roles)
    keep = len(BIAS_GROUPS) - len(GENERIC_GROUPS)
    BIAS_GROUPS = (*BIAS_GROUPS[:keep], *new, *GENERIC_GROUPS)


def module_role(path: str) -> str | None:
    """Return the role of a module path relative to the encoder, or None when it has no known role.

    The lookup uses what follows the layer number and is exact: ``"output.dense"`` never
    catches ``"attention.output.dense"`` (the substring match of the original BitFit code does).

    Args:
        path: e.g. ``"encoder.layer.3.attention.self.query"`` (BERT) or ``"h.3.mlp.c_fc"`` (GPT-2).
    """
    return _ROLES.get(re.split(r"(?:^|\.)\d+\.", path)[-1])


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model`` to its group.

    Groups are the ``BIAS_GROUPS`` for the encoder's biases (every parameter named
    ``bias``: a known role, else a generic ``other_*`` group), ``"head"`` for everything
    outside the encoder (classifier, pre_classifier, score, ...) and ``"frozen"`` for the
    remaining encoder parameters (weight matrices, embeddings, LayerNorm gains).
    (Wrapped models, e.g. peft's, have their own names: ``lab.methods.parameter_groups``.)
    """
    prefix = encoder_prefix(model)
    modules = dict(model.named_modules())
    return {name: parameter_group(name, modules[name.rpartition(".")[0]], prefix)
            for name, _ in model.named_parameters()}


def parameter_group(name: str, owner: nn.Module, prefix: str) -> str:
    """The group of one parameter.

    Args:
        name: its name in the model, e.g. ``"bert.encoder.layer.0.attention.self.query.bias"``.
        owner: the module that holds it (names a bias that no role table knows).
        prefix: the encoder's attribute name (``encoder_prefix``); ``""``: the model is the encoder.
    """
    if prefix and not name.startswith(prefix + "."):
        return "head"
    path, _, leaf = name.rpartition(".")
    if leaf != "bias":
        return "frozen"
    return module_role(path[len(prefix) + 1 :] if prefix else path) or _generic_group(owner)


def encoder_prefix(model: nn.Module) -> str:
    """The attribute name of the encoder inside ``model`` (``"bert"``; ``""`` if it is the encoder)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def _generic_group(module: nn.Module) -> str:
    """The group of a bias that fits no known role, named by the kind of module that owns it."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (nn.Linear, Conv1D)):
        return "other_linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "other_conv"
    return "other_norm" if "norm" in type(module).__name__.lower() else "other"


def _bias_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, group)`` for every encoder module that has a bias or can take one: a Linear
    or an affine LayerNorm (RMSNorm-style norms cannot: their formula has no bias term)."""
    prefix = encoder_prefix(model)
    base = getattr(model, prefix) if prefix else model
    slots = []
    for path, module in base.named_modules():
        has_bias = dict(module.named_parameters(recurse=False)).get("bias") is not None
        can_take = isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and module.weight is not None)
        if has_bias or can_take:
            slots.append((f"{prefix}.{path}" if prefix else path, module, module_role(path) or _generic_group(module)))
    if not slots:
        raise ValueError(f"{type(model).__name__} has no bias and no Linear or LayerNorm layer to give one: "
                         "BitFit has nothing to train. Check the model you loaded.")
    return slots


def _resolve_groups(bias_terms: str | Sequence[str]) -> tuple[list[str], bool]:
    """Validate ``bias_terms``; return (groups, explicit)."""
    if bias_terms == "all":
        return list(BIAS_GROUPS), False
    groups = [bias_terms] if isinstance(bias_terms, str) else list(bias_terms)
    unknown = [g for g in groups if g not in BIAS_GROUPS]
    if unknown or not groups:
        raise ValueError(f"Unknown bias group(s) {unknown or '(empty list)'}. Use 'all' or a list of: "
                         + ", ".join(BIAS_GROUPS) + " (other architectures' groups: import lab.families).")
    return groups, True


# ----- Counting -----------------------------------------------------------------


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, read from ``requires_grad`` (tied weights count once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_table(model: nn.Module, groups: Mapping[str, str] | None = None):
    """Per-group table (DataFrame): ``tensors``, ``parameters``, ``share_%`` of all, ``trainable``; a ``total`` row.

    Args:
        model: any model.
        groups: parameter name -> group (default: ``parameter_groups(model)``). Groups that are
            no bias group (e.g. adapters) get rows after the bias groups, before ``head`` and ``frozen``.
    """
    import pandas as pd

    group_of = parameter_groups(model) if groups is None else groups
    rows: dict[str, dict[str, float]] = {}
    for name, param in model.named_parameters():
        row = rows.setdefault(group_of[name], {"tensors": 0, "parameters": 0, "trainable": 0})
        row["tensors"] += 1
        row["parameters"] += param.numel()
        row["trainable"] += param.numel() if param.requires_grad else 0
    last = ("head", "frozen")
    extra = [g for g in rows if g not in BIAS_GROUPS and g not in last]
    order = [g for g in (*BIAS_GROUPS, *extra, *last) if g in rows]
    table = pd.DataFrame([{"group": g, **rows[g]} for g in order]).set_index("group")
    table.loc["total"] = table.sum()
    table = table.astype(int)
    table.insert(2, "share_%", (100 * table["parameters"] / table.loc["total", "parameters"]).round(4))
    return table
