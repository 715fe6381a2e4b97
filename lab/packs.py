"""Bias packs: the trained biases and head of a BitFit model as a small safetensors file.

One base model, many tasks: a pack holds what BitFit trained (every encoder bias and the
task head) and says what it is for (task, label names, base model). It is written atomically,
its tensors are checked against a SHA-256 digest on every read, and it is loaded only onto
the base it was trained on, with a head of its labels. All checks happen before any tensor
is copied: a refused pack leaves the model exactly as it was.

Is this the base the pack was trained on? ``base_fingerprint`` hashes the frozen weights.
By default a load checks a sampled fingerprint (4,096 evenly strided elements of every
frozen tensor: about a millisecond instead of hashing hundreds of megabytes); a pack records
the full fingerprint too, checked with ``load_bias_checkpoint(..., verify="full")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

import bitfit_utils as bu
from lab.methods import parameter_groups

PACK_FORMAT = "bitfit-pack/2"
#: Formats that ``read_bias_checkpoint`` refuses with "rewrite the pack": written before packs knew their task.
OLD_FORMATS = ("bitfit-pack/1",)
#: Elements of each frozen tensor that the sampled fingerprint reads.
SAMPLED_ELEMENTS = 4096
VERIFY_MODES = ("sampled", "full")
_REWRITE = "Run section 5 of 02-Train.ipynb again (it saves the pack) to rewrite it."


class LabStepMissing(FileNotFoundError):
    """A file an earlier notebook writes is missing. Jupyter shows only the message."""

    def _render_traceback_(self) -> list[str]:  # IPython: print this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def save_bias_checkpoint(model: nn.Module, path: str | os.PathLike, *, task: str | None = None,
                         label_names: Sequence[str] | None = None, bias_groups: Sequence[str] | None = None,
                         **metadata: Any) -> Path:
    """Save the biases and the head of ``model`` as a safetensors pack for ``task``.

    The pack holds every bias and the head (the trained ones listed as ``trained``), the task
    and its label names, a SHA-256 digest of the tensors (checked on every read) and two
    fingerprints of all other weights (``base_fingerprint``: sampled and full). It is written
    to a temporary file and renamed: a crash leaves no half pack.

    Args:
        model: a model after ``apply_bitfit`` (or ``setup_method(model, 'frozen')``) and training.
        path: where to write, conventionally ``*.safetensors``.
        task: what the head was trained for, e.g. ``"mrpc"`` (required). For a task of
            ``lab.tasks.TASKS`` the labels must be that task's label names, in its order
            (``load_model(..., task=...)`` gives the head them); a config that names no labels
            (transformers' ``LABEL_0``, ``LABEL_1``, ...) passes with the task's number of outputs.
        label_names: the head's labels in output order; default: ``model.config.id2label``
            (for the lab's MRPC models ``["not_equivalent", "equivalent"]``). Given explicitly,
            they must agree with the model's config where it names its labels.
        bias_groups: the bias groups that were trained; default: read from ``requires_grad``
            (the groups whose biases are trainable, as ``apply_bitfit`` reports them).
        **metadata: extra JSON-serialisable facts to store (metrics, settings, ...).

    Raises:
        ValueError: no task, labels that do not fit the head or are not the known task's, a model
            not set up for BitFit, or a metadata value that is not JSON (nothing is written then).
    """
    for key, value in {**metadata, "bias_groups": bias_groups}.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Metadata '{key}' ({type(value).__name__}) cannot be stored in a pack ({err}). Pass JSON "
                f"values (str, int, float, bool, None, lists and dicts of them), e.g. {key}=str(...)."
            ) from None
    if not isinstance(task, str) or not task:
        raise ValueError("A pack must say which task its head was trained for: "
                         "save_bias_checkpoint(model, path, task='mrpc', ...).")
    labels = _pack_labels(model, label_names)
    _check_task_labels(task, labels)
    groups = parameter_groups(model)
    names = [n for n, g in groups.items() if g != "frozen"]
    params = dict(model.named_parameters())
    trained = [n for n in names if params[n].requires_grad]
    if not trained or any(p.requires_grad for n, p in params.items() if n not in names):
        raise ValueError("A bias pack holds biases and the head only: call apply_bitfit(model) "
                         "(or setup_method(model, 'frozen')) before training and saving.")
    if bias_groups is None:
        bias_groups = [g for g in bu.BIAS_GROUPS if any(groups[n] == g for n in trained)]
    tensors = {n: params[n].detach().cpu().contiguous() for n in names}
    config = getattr(model, "config", None)
    meta = {
        "format": PACK_FORMAT,
        "base_model": str(getattr(config, "_name_or_path", "") or ""),
        "architecture": type(model).__name__,
        "task": task,
        "head": str(getattr(config, "lab_pooling", "cls")),  # what the head reads (lab.heads.set_pooling)
        "label_names": json.dumps(labels),
        "fingerprint": base_fingerprint(model, names),
        "fingerprint_full": base_fingerprint(model, names, full=True),
        "digest": _tensor_digest(sorted(tensors.items())),
        "bias_groups": json.dumps(list(bias_groups)),
        "trained": json.dumps(trained),
        "id2label": json.dumps({str(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}),
        "versions": json.dumps(library_versions()),
        "user": json.dumps(metadata),
    }
    from safetensors.torch import save

    return write_atomically(Path(path), save(tensors, metadata=meta))


def read_bias_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a pack without touching any model: ``(tensors, metadata)``.

    Raises:
        LabStepMissing: no file at ``path`` (02-Train writes it).
        ValueError: truncated, corrupt (tensors differ from the digest written at save), not a
            pack, or an old pack that does not say its task and labels (rewrite it with 02).
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
    if raw.get("format") in OLD_FORMATS or (raw.get("format") == PACK_FORMAT and not raw.get("task")):
        raise ValueError(f"'{path}' is a bias pack from an older version of the lab ({raw.get('format')}): it "
                         f"does not say which task and labels its head has, so it cannot be checked. {_REWRITE}")
    if raw.get("format") != PACK_FORMAT:
        raise ValueError(f"'{path}' is a safetensors file but not a BitFit pack (format={raw.get('format')!r}).")
    if _tensor_digest(sorted(tensors.items())) != raw.get("digest"):
        raise ValueError(
            f"'{path}' is damaged: its tensors do not match the SHA-256 digest written when it was saved "
            "(a changed byte: a bad copy or disk). Copy the pack again from where it came from, or save it "
            "again with save_bias_checkpoint."
        )
    meta = {k: raw.get(k, "") for k in ("format", "base_model", "architecture", "task", "fingerprint",
                                        "fingerprint_full", "digest")}
    meta["head"] = raw.get("head") or "cls"  # packs written before the head was recorded read through [CLS]
    for k in ("label_names", "bias_groups", "trained", "id2label", "versions", "user"):
        meta[k] = json.loads(raw.get(k) or "null")
    return tensors, meta


def load_bias_checkpoint(model: nn.Module, path: str | os.PathLike, strict_name: bool = True, *,
                         verify: str = "sampled", task: str | None = None) -> dict[str, Any]:
    """Load a pack into ``model`` in place, after checking it belongs to this base model and head.

    All checks happen before any tensor is copied, so on error the model is left exactly as
    it was. The frozen weights are fingerprinted anew on every load (no cache).

    ``verify="sampled"`` (the default, fast) hashes 4,096 evenly strided elements of each
    frozen tensor, with its name, shape and dtype. It refuses another checkpoint and any
    change that rewrites a tensor (training the frozen weights, ``load_state_dict`` or
    ``copy_`` of other weights). It cannot see a change confined to elements between the
    sampled positions of a tensor larger than 4,096 elements, e.g. a few entries edited in
    place through ``.data`` or ``state_dict()``. ``verify="full"`` hashes every byte of every
    frozen tensor (SHA-256, as at save time) and sees any change; use it when the base may
    have been edited by hand, or once after loading a base from an untrusted source.

    Args:
        model: the base model (freshly loaded, or carrying another pack).
        path: a file written by ``save_bias_checkpoint``.
        strict_name: also require the recorded base-model name to match.
        verify: ``"sampled"`` or ``"full"`` (see above).
        task: if given, the task the pack must be for (a server that expects ``"mrpc"``).

    Returns:
        The pack's metadata.

    Raises:
        ValueError: another task, another head (size or label names), another base model
            (name, architecture, fingerprint), missing, extra or mis-shaped tensors.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}: use 'sampled' (fast, the default) or 'full' (every byte).")
    tensors, meta = read_bias_checkpoint(path)
    hint = "Load the base model the pack was trained on (see its metadata), or retrain."
    head = getattr(model.config, "lab_pooling", "cls")
    if meta["head"] != head:
        raise ValueError(f"Pack '{path}' was trained with the '{meta['head']}' head, this model has the '{head}' head. "
                         f"Call lab.heads.set_pooling(model, '{meta['head']}') first (load_pack_model does).")
    if task is not None and meta["task"] != task:
        raise ValueError(f"Pack '{path}' is for task '{meta['task']}', not '{task}'. Load the pack of task "
                         f"'{task}', or pass task='{meta['task']}' if this pack is the one you mean.")
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if strict_name and meta["base_model"] and name and meta["base_model"] != name:
        raise ValueError(f"Pack '{path}' was trained on '{meta['base_model']}', this model is '{name}'. {hint}")
    if meta["architecture"] != type(model).__name__:
        raise ValueError(f"Pack '{path}' is for a {meta['architecture']}, this is a {type(model).__name__}. {hint}")
    _check_labels(model, meta, path)
    params = dict(model.named_parameters())
    if extra := sorted(set(tensors) - set(params)):
        biasless = {f"{p}.bias" for p, module in model.named_modules() if getattr(module, "bias", 0) is None}
        if set(extra) <= biasless:
            hint = ("The pack has biases this model's layers were built without: call "
                    "apply_bitfit(model, add_missing_biases=True) first, then load the pack.")
        raise ValueError(f"Pack '{path}' has tensors this model lacks: {extra[:5]}. {hint}")
    if bad := [n for n, t in tensors.items() if t.shape != params[n].shape or t.dtype != params[n].dtype]:
        n = bad[0]
        raise ValueError(f"Pack '{path}': '{n}' is {tuple(tensors[n].shape)} {tensors[n].dtype}, the model has "
                         f"{tuple(params[n].shape)} {params[n].dtype}. {hint}")
    if missing := sorted(set(pack_names(model)) - set(tensors)):
        raise ValueError(f"Pack '{path}' lacks bias/head tensors {missing[:5]}. {hint}")
    full = verify == "full"
    if base_fingerprint(model, tensors, full=full) != meta["fingerprint_full" if full else "fingerprint"]:
        raise ValueError(f"Pack '{path}' does not fit this model: its frozen weights differ from the ones the "
                         f"pack was trained on ({verify} fingerprint mismatch). {hint}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return meta


def pack_names(model: nn.Module) -> list[str]:
    """Names stored in a pack: every encoder bias (frozen ones too, so that switching packs never
    leaves another pack's biases behind) and the head."""
    return [n for n, g in parameter_groups(model).items() if g != "frozen"]


def base_fingerprint(model: nn.Module, exclude: Iterable[str], full: bool = False) -> str:
    """SHA-256 over every parameter of ``model`` not in ``exclude``: name, shape, dtype and values.

    Args:
        model: the model whose frozen weights to fingerprint.
        exclude: parameter names to leave out (a pack's biases and head).
        full: hash every element. Default: ``SAMPLED_ELEMENTS`` (4,096) evenly strided elements
            of each tensor, the first and the last included (all of a smaller tensor). The
            sampled fingerprint changes when a tensor is replaced or trained, not when only
            elements between the sampled positions change (see ``load_bias_checkpoint``).

    Computed afresh every time: no cache could notice every way a weight can change (``.data``
    writes bypass version counters).
    """
    exclude = frozenset(exclude)
    named = ((n, p.detach()) for n, p in model.named_parameters() if n not in exclude)
    return _tensor_digest(named if full else ((n, _strided_sample(p)) for n, p in named))


def _strided_sample(tensor: torch.Tensor) -> tuple[torch.Size, torch.Tensor]:
    """``(shape, values)``: ``SAMPLED_ELEMENTS`` evenly strided elements of ``tensor`` (all if it is smaller)."""
    flat = tensor.reshape(-1)
    n = flat.numel()
    if n > SAMPLED_ELEMENTS:
        steps = torch.arange(SAMPLED_ELEMENTS, device=flat.device)
        flat = flat[steps * (n - 1) // (SAMPLED_ELEMENTS - 1)]
    return tensor.shape, flat


def _tensor_digest(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``(name, tensor)`` pairs, in order.

    A value may also be ``(shape, flat tensor)`` (a sample): the shape hashed is the given one.
    """
    digest = hashlib.sha256()
    for name, value in named:
        shape, tensor = value if isinstance(value, tuple) else (value.shape, value)
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(shape)}|{tensor.dtype}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # a view of the bytes, not a copy
    return digest.hexdigest()


def _model_labels(model: nn.Module) -> list[str] | None:
    """The model's label names in output order (``config.id2label``), or None when it has none."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)] or None


def _pack_labels(model: nn.Module, label_names: Sequence[str] | None) -> list[str]:
    """The label names a pack records: the explicit ones (checked against the model) or the model's."""
    own = _model_labels(model)
    if label_names is None:
        if own is None:
            raise ValueError("This model's config names no labels (config.id2label): pass "
                             "label_names=[...] in the head's output order.")
        return own
    labels = [str(x) for x in label_names]
    if own is not None and labels != own:
        raise ValueError(f"label_names {labels} differ from the model's config.id2label {own}. Set "
                         "model.config.id2label (and label2id) to the task's labels before training, then save.")
    return labels


def _placeholder_labels(labels: Sequence[str]) -> bool:
    """Whether ``labels`` are transformers' names for a head whose config names none: ``LABEL_0``, ``LABEL_1``, ..."""
    return list(labels) == [f"LABEL_{i}" for i in range(len(labels))]


def _check_task_labels(task: str, labels: Sequence[str]) -> None:
    """Refuse a pack for a task of ``lab.tasks.TASKS`` whose labels are not that task's label names.

    Another task name (a benchmark's, a test's) is not checked; placeholder names (:func:`_placeholder_labels`)
    pass when the head has the task's number of outputs.

    Raises:
        ValueError: saying what the labels are, what the task's are, and how to load the model for the task.
    """
    from lab.tasks import get_task

    try:
        spec = get_task(task)
    except ValueError:  # not a task the lab knows: nothing to check against
        return
    expected = list(spec.label_names)
    if list(labels) == expected or (_placeholder_labels(labels) and len(labels) == len(expected)):
        return
    raise ValueError(
        f"A pack for task '{task}' must have {spec.title}'s labels {expected}, in this order; this model's head has "
        f"{list(labels)}. Load the model for the task, lab.models.load_model(..., task='{spec.name}'), before "
        f"training (a model loaded without task= gets MRPC's names for 2 labels), or save the pack for the task "
        f"its head was trained for.")


def _check_labels(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a pack whose head has another number of outputs or other label names than ``model``'s."""
    labels, own = meta["label_names"], _model_labels(model)
    if own is None or own == labels:
        return
    what = (f"a head of {len(own)} outputs ({', '.join(own)})" if len(own) != len(labels)
            else f"the labels {', '.join(own)}")
    raise ValueError(
        f"Pack '{path}' is for task '{meta['task']}' with {len(labels)} labels ({', '.join(labels)}); this model has "
        f"{what}. Load the model for this pack with num_labels={len(labels)} and these labels "
        "(lab.models.load_pack_model(path) does), or load a pack trained for this model's task.")


def write_atomically(path: Path, blob: bytes) -> Path:
    """Write ``blob`` to a temporary file beside ``path``, flush it to disk, then rename it into place.

    The file gets the permissions any new file of the user gets (``mkstemp`` alone would leave it 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def library_versions() -> dict[str, str]:
    """Versions of torch, transformers and safetensors, as stored in a pack's metadata."""
    import importlib.metadata

    return {"torch": torch.__version__, **{p: importlib.metadata.version(p) for p in ("transformers", "safetensors")}}
