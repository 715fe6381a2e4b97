"""One frozen base model serving several tasks' BitFit packs.

A BitFit pack is a task's trained biases plus its head (the classifier; for BERT also the pooler's
bias when it was trained) on top of a frozen base that every task shares. :class:`MultiTaskBitFit`
keeps the base's own biases as the reference and stores, per task, the bias *deltas* (pack bias -
base bias) and the head. It answers in two ways:

* ``switch(task)``: write that task's biases into the model in place and hand it that task's
  head; a plain ``model(...)`` then answers for the task. No disk I/O, no full re-hash.
* ``forward_mixed(..., task_ids)``: one forward pass for a batch whose examples belong to
  different tasks. A bias adds to its layer's output, so each example can carry its own: a Linear
  whose bias some task moves computes ``x @ W.T + (bias + delta)[task_ids]`` in one ``addmm``, and
  a hook adds ``delta[task_ids]`` to such a LayerNorm's output. Each example then gets its task's head.

Both refuse to run when a frozen (non-bias, non-head) tensor was written or replaced since the
packs were attached: training, ``load_state_dict``, ``copy_``, ``nn.init``. That check reads each
tensor's identity and PyTorch's in-place version counter, so it costs microseconds per call. What it
cannot see: an in-place edit through ``tensor.data``, which bypasses the version counter.
:meth:`MultiTaskBitFit.check_base` with ``sampled=True`` also hashes 4,096 strided elements per
tensor (``lab.packs.base_fingerprint``), and :meth:`MultiTaskBitFit.verify_full` hashes them all.

Supported heads: BERT-style ``...ForSequenceClassification`` models whose logits are
``classifier(dropout(pooler_output))`` with a Linear ``classifier`` (BERT, MiniLM), the pooler
being BERT's (dense + tanh on [CLS]) or the parameter-free masked mean of ``lab.heads``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

import bitfit_utils as bu
from lab import packs
from lab.tasks import DEFAULT_MAX_LENGTH
from lab.packs import base_fingerprint

class BaseChanged(RuntimeError):
    """The shared base's frozen weights changed after the packs were attached."""


@dataclass
class TaskPack:
    """One task as served: bias deltas against the base, its head, its label names."""

    deltas: dict[str, torch.Tensor]
    head: nn.Linear
    id2label: dict[int, str]


class MultiTaskBitFit:
    """One frozen base model and several tasks' BitFit packs.

    Args:
        model: a BERT-style ``...ForSequenceClassification`` in its base state (the biases it holds
            now are the reference the deltas are taken against; its classifier is ignored).
        packs: ``{task: pack}``, a pack being a path or ``(tensors, metadata)`` from
            ``bitfit_utils.read_bias_checkpoint``; more can be added with :meth:`add_pack`.
        strict_name: require each pack's recorded base-model name to equal the model's.

    Raises:
        ValueError: an unsupported head, or a pack that does not fit (see :meth:`add_pack`).
    """

    def __init__(self, model: nn.Module, packs: Mapping[str, Any] | None = None, strict_name: bool = True) -> None:
        _check_supported(model)
        self.model = model
        self.strict_name = strict_name
        groups = bu.parameter_groups(model)
        params = dict(model.named_parameters())
        self._head_names = sorted(n for n, g in groups.items() if g == "head")
        self._bias_names = [n for n, g in groups.items() if g not in ("head", "frozen")]
        self._exclude = frozenset(self._head_names) | frozenset(self._bias_names)
        self._biases = {n: params[n] for n in self._bias_names}
        self._base = {n: p.detach().clone() for n, p in self._biases.items()}
        modules = dict(model.named_modules())
        self._owners = {n: modules[n.rpartition(".")[0]] for n in self._bias_names}  # the module owning each bias
        self._full_fingerprint = base_fingerprint(model, self._exclude, full=True)
        self._fingerprint = base_fingerprint(model, self._exclude)
        self._stamp = self._frozen_stamp()
        self.tasks: dict[str, TaskPack] = {}
        self.active: str | None = None
        self._stacked: list[tuple[nn.Module, torch.Tensor]] | None = None
        for task, pack in (packs or {}).items():
            self.add_pack(task, pack)

    # ----- attaching packs -----------------------------------------------------

    def add_pack(self, task: str, pack: Any, labels: Sequence[str] | None = None) -> None:
        """Attach one task's pack: check it fits this base, store its deltas and head.

        Args:
            task: the name requests use; a pack whose metadata names another task is refused.
            pack: a path, or ``(tensors, metadata)`` as ``read_bias_checkpoint`` returns.
            labels: the label names this task must have (optional); the pack's must be equal.

        Raises:
            ValueError: a task already attached, another task's pack, another base model
                (name, architecture, frozen weights), missing/extra/mis-shaped tensors, or a head
                whose size disagrees with its label names or with ``labels``.
            BaseChanged: the frozen weights changed since this object was built.
        """
        self.check_base(sampled=True)  # the attach-time fingerprints below must still describe the model
        source = str(pack) if isinstance(pack, (str, os.PathLike)) else f"pack for '{task}'"
        tensors, meta = packs.read_bias_checkpoint(pack) if isinstance(pack, (str, os.PathLike)) else pack
        if task in self.tasks:
            raise ValueError(f"Task '{task}' already has a pack; remove_pack('{task}') first to replace it.")
        self._check_pack_identity(task, source, meta)
        self._check_pack_tensors(source, tensors)
        if meta.get("fingerprint_full") != self._full_fingerprint:
            raise ValueError(f"{source} does not fit this base: the frozen weights differ from the ones it was "
                             "trained on (fingerprint mismatch). Attach packs trained on this very base model.")
        head = self._build_head(task, source, tensors, meta, labels)
        deltas = {n: (tensors[n].to(self._base[n]) - self._base[n]) for n in self._bias_names}
        self.tasks[task] = TaskPack(deltas, head, dict(enumerate(head_labels(meta, head.out_features))))
        self._stacked = None

    def remove_pack(self, task: str) -> None:
        """Detach ``task`` (the model keeps whatever biases it holds now)."""
        self._task(task)
        del self.tasks[task]
        self._stacked = None
        if self.active == task:
            self.active = None

    def _check_pack_identity(self, task: str, source: str, meta: dict[str, Any]) -> None:
        """Refuse another format, task, architecture or base-model name."""
        hint = "Attach packs trained on this very base model (see the pack's metadata)."
        if meta.get("format") != packs.PACK_FORMAT:
            raise ValueError(f"{source} is not a BitFit pack (format={meta.get('format')!r}).")
        named = meta.get("task") or (meta.get("user") or {}).get("task")
        if named is not None and named != task:
            raise ValueError(f"{source} is the pack of task '{named}', not '{task}': attach it under '{named}' "
                             "or pick the right pack.")
        name = str(getattr(self.model.config, "_name_or_path", "") or "")
        if self.strict_name and meta.get("base_model") and name and meta["base_model"] != name:
            raise ValueError(f"{source} was trained on '{meta['base_model']}', this base is '{name}'. {hint}")
        if meta.get("architecture") != type(self.model).__name__:
            raise ValueError(f"{source} is for a {meta.get('architecture')}, this base is a "
                             f"{type(self.model).__name__}. {hint}")

    def _check_pack_tensors(self, source: str, tensors: dict[str, torch.Tensor]) -> None:
        """Refuse missing, extra or mis-shaped bias tensors and a head other than this model's."""
        expected = set(self._bias_names) | set(self._head_names)
        if missing := sorted(expected - set(tensors)):
            raise ValueError(f"{source} lacks tensors {missing[:5]}: it was saved from another head or pooling "
                             "(lab.heads.set_pooling) than this base has.")
        if extra := sorted(set(tensors) - expected):
            raise ValueError(f"{source} has tensors this base lacks: {extra[:5]}; it was saved from another head "
                             "or pooling (lab.heads.set_pooling) than this base has.")
        for n in self._bias_names:
            if tensors[n].shape != self._base[n].shape:
                raise ValueError(f"{source}: '{n}' is {tuple(tensors[n].shape)}, this base has "
                                 f"{tuple(self._base[n].shape)}.")

    def _build_head(self, task: str, source: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    labels: Sequence[str] | None) -> nn.Linear:
        """The task's classifier as its own frozen Linear, after checking its size against its labels."""
        weight, bias = tensors["classifier.weight"], tensors["classifier.bias"]
        hidden = self.model.classifier.in_features
        if weight.dim() != 2 or weight.shape[1] != hidden or bias.shape != weight.shape[:1]:
            raise ValueError(f"{source}: head is {tuple(weight.shape)} + {tuple(bias.shape)}, expected (k, {hidden}) "
                             "+ (k,): it was trained on another base size.")
        k = weight.shape[0]
        recorded = meta.get("id2label") or {}
        if recorded and len(recorded) != k:
            raise ValueError(f"{source}: the head has {k} outputs but the pack names {len(recorded)} labels "
                             f"{list(recorded.values())}: the pack is inconsistent; save it again.")
        names = head_labels(meta, k)
        if labels is not None and list(labels) != names:
            raise ValueError(f"{source}: task '{task}' must have labels {list(labels)}, the pack's head has "
                             f"{k} outputs named {names}. Attach the pack trained for these labels.")
        ref = self.model.classifier.weight
        head = nn.Linear(hidden, k, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return head.requires_grad_(False).eval()

    # ----- checks ----------------------------------------------------------------

    def check_base(self, sampled: bool = False) -> None:
        """Raise :class:`BaseChanged` if a frozen tensor was written or replaced since attach.

        Args:
            sampled: also compare the sampled fingerprint (4,096 elements per tensor), which sees an
                edit through ``.data`` at a sampled position; the default check reads only each
                tensor's identity and version counter.
        """
        if self._frozen_stamp() != self._stamp or (
                sampled and base_fingerprint(self.model, self._exclude) != self._fingerprint):
            raise BaseChanged(
                "The base model's frozen weights changed after the packs were attached (training, "
                "load_state_dict or a copy into them): every pack's biases were trained for the old weights. "
                "Reload the base model and build a new MultiTaskBitFit.")

    def _frozen_stamp(self) -> tuple[tuple[str, int, int], ...]:
        """``(name, id, version)`` of every frozen tensor: any in-place write bumps the version."""
        return tuple((n, id(p), p._version) for n, p in self.model.named_parameters() if n not in self._exclude)

    def verify_full(self) -> None:
        """Hash every frozen element (slow: the whole model) and raise :class:`BaseChanged` on any change.

        ``switch`` and ``forward_mixed`` see every in-place write except one through ``.data``;
        ``check_base(sampled=True)`` sees such an edit only at a sampled position. Call this where
        that matters (after loading, on a schedule).
        """
        if base_fingerprint(self.model, self._exclude, full=True) != self._full_fingerprint:
            raise BaseChanged(
                "The base model's frozen weights differ from those the packs were attached to (full check: "
                "some element changed). Reload the base model and build a new MultiTaskBitFit.")

    # ----- one task at a time ---------------------------------------------------

    def switch(self, task: str) -> None:
        """Make a plain ``model(...)`` answer for ``task``: biases written in place, head and labels set.

        Biases: ``base + delta`` written into the model's own bias tensors (no allocation). Head: the
        model's ``classifier`` attribute is pointed at the task's Linear (heads may differ in size),
        and ``num_labels`` / ``config.id2label`` follow it.

        Raises:
            KeyError: an unknown task.
            BaseChanged: the frozen weights changed since the packs were attached.
        """
        pack = self._task(task)
        self.check_base()
        self._write_biases(pack.deltas)
        self.model.classifier = pack.head
        self.model.num_labels = pack.head.out_features
        self.model.config.id2label = dict(pack.id2label)
        self.model.config.label2id = {v: k for k, v in pack.id2label.items()}
        self.active = task

    def _write_biases(self, deltas: dict[str, torch.Tensor] | None) -> None:
        """Write ``base + deltas`` (or the base biases when ``deltas`` is None) into the model."""
        with torch.no_grad():
            for n, param in self._biases.items():
                if deltas is None:
                    param.copy_(self._base[n])
                else:
                    torch.add(self._base[n], deltas[n], out=param)

    def _task(self, task: str) -> TaskPack:
        if task not in self.tasks:
            raise KeyError(f"No pack for task '{task}'. Attached: {sorted(self.tasks)}.")
        return self.tasks[task]

    # ----- a mixed batch in one pass ---------------------------------------------

    def forward_mixed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None,
                      task_ids: torch.Tensor | Sequence[int] | Sequence[str] = ()) -> list[torch.Tensor]:
        """Logits for a batch whose examples belong to different tasks, in one forward pass.

        Args:
            input_ids, attention_mask, token_type_ids: the padded batch, as for a plain forward.
            task_ids: per example, a task name or its index in ``task_names``.

        Returns:
            One 1-D logits tensor per example (its task's number of labels), equal to that task's
            plain forward after ``switch`` up to float rounding.

        Raises:
            ValueError: the model is in training mode, or ``task_ids`` does not match the batch.
            BaseChanged: the frozen weights changed since the packs were attached.
        """
        if self.model.training:
            raise ValueError("forward_mixed serves predictions: call model.eval() first (dropout would make "
                             "each example's answer random).")
        ids = self._task_index(task_ids, input_ids.shape[0], input_ids.device)
        self.check_base()
        names = self.task_names
        with torch.no_grad(), self._mixed_biases(ids):
            out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        token_type_ids=token_type_ids)
            pooled = self.model.dropout(out.pooler_output)
            logits: list[torch.Tensor | None] = [None] * len(ids)
            for t in ids.unique().tolist():
                rows = (ids == t).nonzero().flatten()
                for row, value in zip(rows.tolist(), self.tasks[names[t]].head(pooled[rows])):
                    logits[row] = value
        return logits  # type: ignore[return-value]

    def predict(self, requests: Sequence[tuple[str, str | tuple[str, str]]], tokenizer,
                max_length: int = DEFAULT_MAX_LENGTH) -> list[dict[str, Any]]:
        """Answer ``(task, text)`` / ``(task, (text_a, text_b))`` requests in one mixed forward pass.

        Returns:
            Per request: ``task``, ``label`` (name), ``probs`` (list of floats, the task's labels in order).
        """
        batch = encode_requests(requests, tokenizer, max_length)
        tasks = [task for task, _ in requests]
        logits = self.forward_mixed(**batch, task_ids=tasks)
        answers = []
        for task, row in zip(tasks, logits):
            probs = row.float().softmax(-1)
            answers.append({"task": task, "label": self.tasks[task].id2label[int(probs.argmax())],
                            "probs": probs.tolist()})
        return answers

    def predict_switching(self, requests: Sequence[tuple[str, str | tuple[str, str]]], tokenizer,
                          max_length: int = DEFAULT_MAX_LENGTH) -> list[dict[str, Any]]:
        """The reference for :meth:`predict`: each request alone, a plain forward after ``switch`` (same format)."""
        if self.model.training:
            raise ValueError("predict_switching serves predictions: call model.eval() first.")
        answers = []
        for task, text in requests:
            self.switch(task)
            with torch.no_grad():
                probs = self.model(**encode_requests([(task, text)], tokenizer, max_length)).logits[0].float().softmax(-1)
            answers.append({"task": task, "label": self.tasks[task].id2label[int(probs.argmax())],
                            "probs": probs.tolist()})
        return answers

    @property
    def task_names(self) -> list[str]:
        """Attached tasks in the order their indices in ``task_ids`` refer to."""
        return list(self.tasks)

    def _task_index(self, task_ids, batch: int, device: torch.device) -> torch.Tensor:
        """``task_ids`` (names or indices) as a long tensor of indices into ``task_names``."""
        names = self.task_names
        if not isinstance(task_ids, torch.Tensor):
            for t in task_ids:
                if isinstance(t, str):
                    self._task(t)  # an unknown name: KeyError naming the attached tasks
            task_ids = [names.index(t) if isinstance(t, str) else t for t in task_ids]
        ids = torch.as_tensor(task_ids, dtype=torch.long, device=device).reshape(-1)
        if ids.numel() != batch:
            raise ValueError(f"task_ids has {ids.numel()} entries for a batch of {batch}: give one task per example.")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(names)):
            raise ValueError(f"task_ids must index {names} (0..{len(names) - 1}); got {ids.tolist()}.")
        return ids

    @contextmanager
    def _mixed_biases(self, ids: torch.Tensor) -> Iterator[None]:
        """Per-example biases in every Linear's product and LayerNorm's output; undone on exit, whatever happens."""
        handles, linears = [], []
        try:
            self._write_biases(None)
            for module, stacked in self._stacked_deltas():
                if isinstance(module, nn.Linear):
                    module.forward = _linear_with_rows(module, (module.bias.detach() + stacked)[ids])
                    linears.append(module)
                else:
                    handles.append(module.register_forward_hook(_add_rows(stacked, ids)))
            yield
        finally:
            for module in linears:
                del module.forward  # the class's forward again
            for handle in handles:
                handle.remove()
            self._write_biases(self.tasks[self.active].deltas if self.active in self.tasks else None)

    def _stacked_deltas(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """``(module, deltas [tasks, features])`` for every module whose bias differs in some task (cached)."""
        if self._stacked is None:
            stacked = []
            for n in self._bias_names:
                rows = torch.stack([self.tasks[t].deltas[n] for t in self.task_names]) if self.tasks else None
                if rows is None or not rows.any():
                    continue  # no task moves this bias: its module needs no hook
                module = self._owners[n]
                if not isinstance(module, (nn.Linear, nn.LayerNorm)):
                    raise ValueError(f"'{n}' belongs to a {type(module).__name__}; forward_mixed adds deltas to "
                                     "Linear and LayerNorm outputs only. Use switch() per task instead.")
                stacked.append((module, rows))
            self._stacked = stacked
        return self._stacked

    # ----- memory ---------------------------------------------------------------

    def memory_report(self) -> dict[str, Any]:
        """Parameter bytes of this server against N full models: ``served_bytes`` = the model without its
        classifier + the base-bias reference + every pack (deltas, head); ``full_models_bytes`` = N models."""
        classifier = {id(p) for p in self.model.classifier.parameters()}
        base = sum(p.nbytes for p in self.model.parameters() if id(p) not in classifier)  # tied: once
        reference = sum(t.nbytes for t in self._base.values())
        packs = {t: sum(d.nbytes for d in p.deltas.values()) + sum(w.nbytes for w in p.head.parameters())
                 for t, p in self.tasks.items()}
        heads = {t: sum(w.nbytes for w in p.head.parameters()) for t, p in self.tasks.items()}
        served = base + reference + sum(packs.values())
        full = sum(base + h for h in heads.values())
        return {"tasks": len(self.tasks), "base_bytes": base, "bias_reference_bytes": reference,
                "pack_bytes": packs, "served_bytes": served, "full_models_bytes": full,
                "ratio": served / full if full else float("nan")}

    def memory_line(self) -> str:
        """:meth:`memory_report` in one line: this server against one full model per task."""
        m = self.memory_report()
        return (f"one base + {m['tasks']} packs: {m['served_bytes'] / 1e6:.1f} MB; {m['tasks']} full models: "
                f"{m['full_models_bytes'] / 1e6:.1f} MB ({100 * m['ratio']:.0f} %)")


# ----- helpers ------------------------------------------------------------------


def _check_supported(model: nn.Module) -> None:
    """Refuse a model whose logits are not ``classifier(dropout(base_model(...).pooler_output))``."""
    classifier = getattr(model, "classifier", None)
    backbone = getattr(model, "base_model", None)
    if not isinstance(classifier, nn.Linear) or backbone is None or getattr(backbone, "pooler", None) is None \
            or not isinstance(getattr(model, "dropout", None), nn.Dropout):
        raise ValueError(f"MultiTaskBitFit serves BERT-style classifiers (pooler -> dropout -> Linear classifier); "
                         f"{type(model).__name__} computes its logits another way. Use "
                         "bitfit_utils.load_bias_checkpoint per task instead.")


def _linear_with_rows(module: nn.Linear, bias_rows: torch.Tensor):
    """A forward for ``module`` in which example ``i`` uses the bias ``bias_rows[i]``: the output starts as
    each example's bias on all its tokens and ``addmm_`` adds the product in place, as ``F.linear`` does."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = bias_rows.to(x.dtype)
        out = rows.unsqueeze(1).expand(*x.shape[:-1], -1).contiguous() if x.dim() == 3 else rows.clone()
        out.view(-1, module.out_features).addmm_(x.reshape(-1, x.shape[-1]), module.weight.t())
        return out

    return forward


def _add_rows(stacked: torch.Tensor, ids: torch.Tensor):
    """A forward hook adding ``stacked[ids]`` (one delta row per example) to a module's fresh output, in place."""
    def hook(module, args, output):
        rows = stacked[ids].to(output.dtype)
        output.add_(rows.unsqueeze(1) if output.dim() == 3 else rows)

    return hook


def head_labels(meta: dict[str, Any], k: int) -> list[str]:
    """The label names a pack records for its ``k`` outputs (``LABEL_i`` where it records none)."""
    recorded = meta.get("id2label") or {}
    return [recorded.get(str(i), recorded.get(i, f"LABEL_{i}")) for i in range(k)]


def encode_requests(requests: Sequence[tuple[str, str | tuple[str, str]]], tokenizer,
                    max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Tokenize ``(task, text)`` and ``(task, (text_a, text_b))`` requests into one padded batch."""
    encoded = []
    for _, text in requests:
        first, second = (text if isinstance(text, (tuple, list)) else (text, None))
        encoded.append(tokenizer(first, second, truncation=True, max_length=max_length))
    batch = tokenizer.pad(encoded, return_tensors="pt")
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

