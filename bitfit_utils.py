"""BitFit in one file (Ben Zaken, Ravfogel & Goldberg, ACL 2022).

BitFit freezes a pre-trained Transformer and trains only its bias terms (plus the task head).
Read top to bottom:

1. ``apply_bitfit``: freeze everything but the chosen bias groups and the head.
2. The bias groups: which bias belongs to which module role (``parameter_groups``).
3. Counting: ``count_parameters`` and the per-group ``parameter_table``.
4. Bias packs: the trained biases and head as a small safetensors file, written
   atomically and loaded only onto the base model they were trained on.

Everything else the notebooks share (data, model loading, training, plots, LoRA/BEFT,
other architectures' role tables) lives in the ``lab/`` package, one module per concern.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from lab.families import FAMILY_ROLES, OTHER_GROUPS

#: BERT's bias groups, named by the role of the module that owns the bias: BitFit's b_q, b_k,
#: b_v (attention), b_o and its LayerNorm, b_m1 / b_m2 (the FFN's two layers) and LayerNorm,
#: the embeddings' LayerNorm and the pooler.
BERT_ROLES: dict[str, str] = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_layernorm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_layernorm",
    "embeddings.LayerNorm": "embeddings_layernorm", "pooler.dense": "pooler",
}
#: Every group name ``apply_bitfit`` accepts: BERT's ten first, then other architectures' roles.
BIAS_GROUPS: tuple[str, ...] = (*dict.fromkeys(BERT_ROLES.values()), *OTHER_GROUPS)


@dataclass
class BitFitReport:
    """What ``apply_bitfit`` did: totals, one row per group, and layers that have no bias."""

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
        A ``BitFitReport`` with ``trainable``, ``total``, ``percent``, rows and ``without_bias``.

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
    # the groups with biases to train (not those whose layers all lack one); recorded in saved packs
    model.bitfit_bias_terms = [g for g in groups if any(grp == g and m.bias is not None for _, m, grp in slots)]
    trainable, total = count_parameters(model)
    rows = parameter_table(model).reset_index().to_dict("records")
    return BitFitReport(trainable, total, model.bitfit_bias_terms, rows, [path for path, _ in missing])


# ----- The bias groups --------------------------------------------------------

_ROLES: dict[str, str] = {path: role for table in (BERT_ROLES, *FAMILY_ROLES.values()) for path, role in table.items()}
assert len(_ROLES) == len(BERT_ROLES) + sum(map(len, FAMILY_ROLES.values())), "a module path is listed twice"


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
    A peft-wrapped model also has a ``"lora"`` or ``"beft"`` group (``lab.methods``).
    """
    peft_wrapped = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    prefix = _base_prefix(model.get_base_model() if peft_wrapped else model)
    modules = dict(model.named_modules())
    groups: dict[str, str] = {}
    for full_name, _ in model.named_parameters():
        owner, _, leaf = full_name.rpartition(".")
        name = full_name
        if peft_wrapped:  # peft: base_model.model.<name>, its own tensors, wrapped layers' base_layer
            if adapter := next((kind for kind in ("lora", "beft") if f".{kind}_" in name), None):
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


def _base_prefix(model: nn.Module) -> str:
    """The attribute name of the encoder inside ``model`` ("" if it is the encoder)."""
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
    prefix = _base_prefix(model)
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
                         + ", ".join(BIAS_GROUPS))
    return groups, True


# ----- Counting ---------------------------------------------------------------


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, read from ``requires_grad`` (tied weights count once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_table(model: nn.Module):
    """Per-group table (DataFrame): ``tensors``, ``parameters``, ``share_%`` of all, ``trainable``; a ``total`` row."""
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


# ----- Bias packs (checkpoints) -----------------------------------------------

PACK_FORMAT = "bitfit-pack/1"


class LabStepMissing(FileNotFoundError):
    """A file an earlier notebook writes is missing. Jupyter shows only the message."""

    def _render_traceback_(self) -> list[str]:  # IPython: print this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def save_bias_checkpoint(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Save the biases and the head of ``model`` as a safetensors pack.

    The pack holds every bias and the head (the trained ones listed as ``trained``), a SHA-256
    digest of them (checked on every read) and a fingerprint of all other weights (checked on
    every load). It is written to a temporary file and renamed: a crash leaves no half pack.

    Args:
        model: a model after ``apply_bitfit`` (and training).
        path: where to write, conventionally ``*.safetensors``.
        **metadata: extra JSON-serialisable facts to store (task, metrics, ...).

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
        "versions": json.dumps(library_versions()),
        "user": json.dumps(metadata),
    }
    from safetensors.torch import save

    return _write_atomically(Path(path), save(tensors, metadata=meta))


def read_bias_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a pack without touching any model: ``(tensors, metadata)``.

    Raises:
        LabStepMissing: no file at ``path``.
        ValueError: truncated, corrupt (tensors differ from the digest written at save) or not a pack.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise LabStepMissing(f"No bias pack at '{path}'. Run 02-Train.ipynb first (it saves the pack), "
                             "or check the path.")
    data = path.read_bytes()
    try:
        tensors = load(data)
        raw = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {})
    except Exception as err:  # safetensors raises its own error type
        raise ValueError(f"'{path}' is not a readable safetensors file ({err}); it may be truncated. "
                         "Save the pack again with save_bias_checkpoint.") from None
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

    All checks happen before any tensor is copied, so on error the model is left exactly
    as it was. The frozen weights are hashed anew on every load (SHA-256, no cache): a base
    changed in any way since the pack was trained is refused.

    Args:
        model: the base model (freshly loaded, or carrying another pack).
        path: a file written by ``save_bias_checkpoint``.
        strict_name: also require the recorded base-model name to match.

    Returns:
        The pack's metadata.

    Raises:
        ValueError: another base model (name, architecture, fingerprint), missing, extra or mis-shaped tensors.
    """
    tensors, meta = read_bias_checkpoint(path)
    params = dict(model.named_parameters())
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    hint = "Load the base model the pack was trained on (see its metadata), or retrain."
    if strict_name and meta["base_model"] and name and meta["base_model"] != name:
        raise ValueError(f"Pack '{path}' was trained on '{meta['base_model']}', this model is '{name}'. {hint}")
    if meta["architecture"] != type(model).__name__:
        raise ValueError(f"Pack '{path}' is for a {meta['architecture']}, this is a {type(model).__name__}. {hint}")
    if extra := sorted(set(tensors) - set(params)):
        biasless = {f"{path}.bias" for path, module in model.named_modules() if getattr(module, "bias", 0) is None}
        if set(extra) <= biasless:
            hint = ("The pack has biases this model's layers were built without: call "
                    "apply_bitfit(model, add_missing_biases=True) first, then load the pack.")
        raise ValueError(f"Pack '{path}' has tensors this model lacks: {extra[:5]}. {hint}")
    if bad := [n for n, t in tensors.items() if t.shape != params[n].shape or t.dtype != params[n].dtype]:
        n = bad[0]
        raise ValueError(f"Pack '{path}': '{n}' is {tuple(tensors[n].shape)} {tensors[n].dtype}, the model has "
                         f"{tuple(params[n].shape)} {params[n].dtype}. {hint}")
    if missing := sorted(set(_pack_names(model)) - set(tensors)):
        raise ValueError(f"Pack '{path}' lacks bias/head tensors {missing[:5]}. {hint}")
    if _frozen_fingerprint(model, tensors) != meta["fingerprint"]:
        raise ValueError(f"Pack '{path}' does not fit this model: its frozen weights differ from the ones the "
                         f"pack was trained on (fingerprint mismatch). {hint}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return meta


def _pack_names(model: nn.Module) -> list[str]:
    """Names stored in a pack: every encoder bias (frozen ones too, so that switching packs never
    leaves another pack's biases behind) and the head."""
    return [n for n, g in parameter_groups(model).items() if g != "frozen"]


def _frozen_fingerprint(model: nn.Module, exclude: Iterable[str]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of all parameters not in ``exclude``.

    Computed afresh every time (no cache could notice every way a weight can change: ``.data``
    writes bypass version counters); the tensors are hashed in place, without a copy.
    """
    exclude = frozenset(exclude)
    return _tensor_digest((n, p) for n, p in model.named_parameters() if n not in exclude)


def _tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``(name, tensor)`` pairs, in order."""
    digest = hashlib.sha256()
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # a view of the bytes, not a copy
    return digest.hexdigest()


def _write_atomically(path: Path, blob: bytes) -> Path:
    """Write ``blob`` to a temporary file beside ``path``, flush it to disk, then rename it into place."""
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


def library_versions() -> dict[str, str]:
    """Versions of torch, transformers and safetensors, as stored in a pack's metadata."""
    import importlib.metadata

    return {"torch": torch.__version__, **{p: importlib.metadata.version(p) for p in ("transformers", "safetensors")}}
