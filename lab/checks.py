"""Self-checks for the exercises at the end of the BitFit lab's notebooks.

Every check recomputes its reference answer itself (``bitfit_utils`` on a copy of
the model, a BERT-base model on the meta device, a fresh autograd pass, the model's
own prediction) and prints one verdict line::

    ✅ correct: <what was verified>
    ❌ not yet: <what is wrong, and a hint>

It also returns a ``CheckResult``, which is truthy only when the answer is correct,
so tests (and the solution notebooks) can assert on it. A check never raises on a
student's answer: an answer left as ``None`` (or ``...``) gets "not yet: fill in ...".

Checks, by notebook:

* 01-Setup: ``check_bias_count``, ``check_same_head``
* 02-Train: ``check_manual_freeze``, ``check_bert_base_count``, ``check_small_lr_run``
* 03-Inference: ``check_key_bias_gradient``, ``check_pack_refusal``, ``check_wrong_pair``
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from typing import Any, Mapping, Sequence

import torch

import bitfit_utils as bu
from lab import packs
from lab.models import load_model, predict
from lab.training import history_frame, run_facts
from lab.verdicts import CheckResult, never_raises, unfilled, verdict


def _reference_trainable(model: torch.nn.Module, bias_terms: str | Sequence[str] = "all") -> dict[str, bool]:
    """``requires_grad`` of every parameter after ``bu.apply_bitfit`` on a copy of ``model``."""
    reference = copy.deepcopy(model)
    bu.apply_bitfit(reference, list(bias_terms) if not isinstance(bias_terms, str) else bias_terms)
    return {name: p.requires_grad for name, p in reference.named_parameters()}


def _explain_gap(gap: int, parts: Mapping[str, int]) -> str:
    """Name the parts (or sums of up to three parts) whose size equals ``|gap|``, if any."""
    if gap == 0:
        return ""
    for k in (1, 2, 3):
        fits = [" + ".join(f"{c} ({parts[c]:,})" for c in combo) for combo in itertools.combinations(parts, k)
                if sum(parts[c] for c in combo) == abs(gap)]
        if fits:
            what = " or ".join(fits[:4]) + (" or ..." if len(fits) > 4 else "")
            return (f" That is exactly the size of {what}: did you leave it out?" if gap > 0
                    else f" That is exactly the size of {what}: counted twice, or counted although it is not trained?")
    return ""


# ---------------------------------------------------------------------------
# 01-Setup
# ---------------------------------------------------------------------------


@never_raises
def check_bias_count(model: torch.nn.Module, encoder_biases: int | None, head_params: int | None) -> CheckResult:
    """Exercise 01.1: biases and head counted by hand vs what ``bu.apply_bitfit(model)`` trains.

    Args:
        model: the loaded classifier.
        encoder_biases: the student's count of bias scalars outside the task head.
        head_params: the student's count of the task head's scalars (weights and biases).
    """
    if (missing := unfilled(encoder_biases=encoder_biases, head_params=head_params)) is not None:
        return missing
    reference = copy.deepcopy(model)
    report = bu.apply_bitfit(reference)
    table = bu.parameter_table(reference)
    head = int(table.loc["head", "trainable"])
    biases = report.trainable - head
    group_of = bu.parameter_groups(reference)
    head_bias = sum(p.numel() for n, p in reference.named_parameters() if group_of[n] == "head" and n.endswith(".bias"))
    details = dict(expected_biases=biases, expected_head=head)
    if encoder_biases != biases:
        hint = (" You included the head's bias: it belongs to the head, so count it in head_params only."
                if encoder_biases == biases + head_bias else
                " Sum p.numel() over the parameters whose name ends in '.bias' and lies outside the head.")
        return verdict(False, f"encoder_biases = {encoder_biases:,} is not the number of bias scalars "
                               f"apply_bitfit trains in the encoder.{hint}", **details)
    if head_params != head:
        hint = (" The head has a bias too." if head_params == head - head_bias else
                " Count every parameter of the head (its weight matrix and its bias).")
        return verdict(False, f"head_params = {head_params:,} is not the head's size.{hint}", **details)
    return verdict(True, f"{biases:,} bias scalars + {head:,} head parameters = {report.trainable:,}, what "
                          f"bu.apply_bitfit(model) trains: {report.percent:.3f} % of {report.total:,}.", **details)


@never_raises
def check_same_head(model_a: torch.nn.Module | None, model_b: torch.nn.Module | None) -> CheckResult:
    """Exercise 01.2: two separate loads of the same pre-trained model with the same random head."""
    if (missing := unfilled(model_a=model_a, model_b=model_b)) is not None:
        return missing
    if model_a is model_b:
        return verdict(False, "model_a and model_b are one and the same object: load the model twice.")
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if params_a.keys() != params_b.keys():
        return verdict(False, "the two models have different parameters: load the same model name twice.")
    if any(params_a[n].data_ptr() == params_b[n].data_ptr() for n in params_a):
        return verdict(False, "the two models share tensors: load the model twice instead of reusing one.")
    groups = bu.parameter_groups(model_a)
    head = [n for n, g in groups.items() if g == "head"]
    encoder_differs = [n for n in params_a if groups[n] != "head" and not torch.equal(params_a[n], params_b[n])]
    if encoder_differs:
        return verdict(False, f"the pre-trained parts differ (e.g. '{encoder_differs[0]}'): load the same "
                               "pre-trained model both times.")
    head_differs = [n for n in head if not torch.equal(params_a[n], params_b[n])]
    if head_differs:
        return verdict(False, f"the heads differ ({', '.join(head_differs)}): each load draws a new random head. "
                               "Call set_seed(SEED) right before *each* load_model(...).")
    return verdict(True, f"two separate models, same pre-trained encoder, identical random head ({', '.join(head)}).")


# ---------------------------------------------------------------------------
# 02-Train
# ---------------------------------------------------------------------------


@never_raises
def check_manual_freeze(my_model: torch.nn.Module | None,
                        bias_terms: Sequence[str] = ("query", "intermediate")) -> CheckResult:
    """Exercise 02.1: hand-written freezing vs ``bu.apply_bitfit(copy, bias_terms)``, tensor by tensor."""
    if (missing := unfilled(my_model=my_model)) is not None:
        return missing
    mine = {name: p.requires_grad for name, p in my_model.named_parameters()}
    reference = _reference_trainable(my_model, bias_terms)
    wrong = [name for name in reference if mine[name] != reference[name]]
    if wrong:
        listed = "; ".join(f"{n} should be {'trainable' if reference[n] else 'frozen'}" for n in wrong[:3])
        return verdict(False, f"{len(wrong)} of {len(reference)} tensors differ from bu.apply_bitfit(model, "
                               f"{list(bias_terms)}): {listed}{' ...' if len(wrong) > 3 else ''}", wrong=wrong)
    trainable, total = bu.count_parameters(my_model)
    return verdict(True, f"all {len(reference)} tensors match bu.apply_bitfit(model, {list(bias_terms)}): "
                          f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f} %).")


def _bert_base_reference() -> tuple[dict[str, int], int, int]:
    """Per-group trainable counts of BERT-base (2 labels) under BitFit, counted on the meta device."""
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):  # shapes only: no memory, no weights
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    every = bu.apply_bitfit(model).trainable
    table = bu.parameter_table(model)
    parts = {g: int(table.loc[g, "trainable"]) for g in table.index if g not in ("frozen", "total")}
    parts["classifier.bias"] = model.classifier.bias.numel()
    parts["one layer's biases"] = sum(p.numel() for n, p in model.named_parameters()
                                      if n.startswith("bert.encoder.layer.0.") and n.endswith(".bias"))
    subset = bu.apply_bitfit(model, ["query", "intermediate"]).trainable
    return parts, every, subset


@never_raises
def check_bert_base_count(bitfit_all: int | None, bitfit_qi: int | None) -> CheckResult:
    """Exercise 02.2: BitFit's parameter counts on BERT-base, predicted by arithmetic.

    The reference is counted on a ``BertForSequenceClassification(BertConfig(num_labels=2))``
    built on the meta device, after ``bu.apply_bitfit`` with all groups and with
    ``["query", "intermediate"]``.
    """
    if (missing := unfilled(bitfit_all=bitfit_all, bitfit_qi=bitfit_qi)) is not None:
        return missing
    parts, every, subset = _bert_base_reference()
    details = dict(expected_all=every, expected_qi=subset)
    for name, value, expected, relevant in (
            ("bitfit_all", bitfit_all, every, parts),
            ("bitfit_qi", bitfit_qi, subset, {k: v for k, v in parts.items() if k not in ("one layer's biases",)})):
        if value != expected:
            gap = expected - int(value)
            side = "small" if gap > 0 else "large"
            return verdict(False, f"{name} = {value:,} is too {side} by {abs(gap):,}.{_explain_gap(gap, relevant)} "
                                   "Count, per layer, every Linear's bias (its output size) and every LayerNorm's "
                                   "bias (hidden), then what lies outside the layers.", **details)
    return verdict(True, f"BERT-base trains {every:,} parameters with all biases and {subset:,} with query + "
                          "intermediate (head included), the same as bu.apply_bitfit on a meta-device BERT-base.",
                    **details)


def _lr(rate: float) -> str:
    """A learning rate as people write it: 2e-5, 0.001 -> 1e-3."""
    if rate >= 0.01:
        return f"{rate:g}"
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _mean_bias_change(model: torch.nn.Module, base: torch.nn.Module) -> float:
    """Mean |b - b0| over every encoder bias scalar (the paper's change measure, pooled)."""
    base_params, group_of = dict(base.named_parameters()), bu.parameter_groups(model)
    diffs = [(p.detach().float().cpu() - base_params[n].detach().float().cpu()).abs().flatten()
             for n, p in model.named_parameters() if group_of[n] in bu.BIAS_GROUPS]
    return torch.cat(diffs).mean().item()


def _first_epoch_text(row: Mapping[str, float]) -> str:
    """Train loss, then loss and accuracy on the set that was scored (validation, else dev)."""
    split, key = next(((s, k) for s, k in (("validation", "eval_validation_"), ("dev", "eval_")) if f"{k}loss" in row),
                      ("dev", "eval_"))
    return (f"train loss {row.get('train_loss', float('nan')):.4f}, {split} loss {row.get(f'{key}loss', float('nan')):.4f}, "
            f"{split} accuracy {row.get(f'{key}accuracy', float('nan')):.3f}")


def _bitfit_run(run, base_model: torch.nn.Module | None):
    """Section 3's BitFit run as the check needs it: ``(model, facts, base_model)`` or a verdict.

    ``run`` is the trained ``Trainer`` or the bias pack section 5 saved (with ``run_facts``).
    """
    if isinstance(run, (str, os.PathLike)):
        if not os.path.isfile(run):
            return verdict(False, f"no pack at '{run}': run sections 3 and 5 of 02 first (section 3 trains "
                                   "BitFit, section 5 saves the pack).")
        _, meta = packs.read_bias_checkpoint(run)
        facts = meta.get("user") or {}
        if not {"learning_rate", "train_pairs", "steps", "first_epoch"} <= set(facts):
            return verdict(False, f"the pack '{run}' does not say how it was trained: run section 5 of 02 "
                                   "again (it saves the run's facts with the pack).")
        if base_model is None:
            base_model, _ = load_model(meta["base_model"], verbose=False)
        model = copy.deepcopy(base_model)
        packs.load_bias_checkpoint(model, run)
        return model, facts, base_model
    if run is None or not run.state.global_step:
        return verdict(False, "section 3's BitFit run is missing: run section 3, or pass the pack section 5 "
                               "saved (packs/mrpc_bitfit.safetensors).")
    if base_model is None:
        base_model, _ = load_model(run.model.name_or_path, verbose=False)
    return run.model, run_facts(run), base_model


@never_raises
def check_small_lr_run(slow_trainer, bitfit_run, base_model: torch.nn.Module | None = None,
                       learning_rate: float = 2e-5, max_ratio: float = 0.2) -> CheckResult:
    """Exercise 02.3: a BitFit run with a full-FT learning rate, compared with section 3's BitFit run.

    Verifies on the student's trainer that the optimizer really used ``learning_rate``
    on exactly the BitFit parameters (all biases + head), for at least one epoch of
    a training set as large as section 3's, starting from the pre-trained model;
    then that its biases moved less than ``max_ratio`` times as far from the
    pre-trained values as section 3's did.

    Args:
        slow_trainer: the student's trained ``Trainer`` (learning rate ``learning_rate``).
        bitfit_run: section 3's trained BitFit ``Trainer``, or (after a restart) the path of the
            bias pack section 5 saved with ``run_facts`` in its metadata.
        base_model: the pre-trained model; loaded by name when None.
    """
    if (missing := unfilled(slow_trainer=slow_trainer)) is not None:
        return missing
    if slow_trainer is bitfit_run or slow_trainer.model is getattr(bitfit_run, "model", None):
        return verdict(False, "this is section 3's model: start from a freshly loaded model.")
    if getattr(slow_trainer, "optimizer", None) is None or not slow_trainer.state.global_step:
        return verdict(False, "slow_trainer has not trained yet: call slow_trainer.train().")
    groups = slow_trainer.optimizer.param_groups
    rates = sorted({g.get("initial_lr", g["lr"]) for g in groups})
    if not all(math.isclose(r, learning_rate, rel_tol=1e-6) for r in rates):
        return verdict(False, f"the optimizer's learning rate was {', '.join(map(_lr, rates))}, not "
                               f"{_lr(learning_rate)}: pass learning_rate={_lr(learning_rate)} to make_trainer.")
    model = slow_trainer.model
    reference = _reference_trainable(model, "all")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if trainable != {n for n, on in reference.items() if on}:
        n_train = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
        return verdict(False, f"the run trained {n_train:,} parameters ({len(trainable)} tensors), not BitFit's "
                               "biases + head: call bu.apply_bitfit(model) before make_trainer.")
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    if in_optimizer != {id(p) for n, p in model.named_parameters() if n in trainable}:
        return verdict(False, "the optimizer does not hold exactly the BitFit parameters: build the trainer with "
                               "make_trainer after bu.apply_bitfit, and train it with .train().")
    found = _bitfit_run(bitfit_run, base_model)
    if isinstance(found, CheckResult):
        return found
    fast_model, facts, base_model = found
    n_slow, n_fast = len(slow_trainer.train_dataset), int(facts["train_pairs"])
    if n_slow != n_fast or slow_trainer.state.epoch < 1 - 1e-6:
        return verdict(False, f"train one full epoch on the same train_set (this run: {n_slow} pairs, "
                               f"{slow_trainer.state.epoch:.2f} epochs; section 3: {n_fast} pairs).")
    slow_change = _mean_bias_change(model, base_model)
    fast_change = _mean_bias_change(fast_model, base_model)
    steps_slow, steps_fast = slow_trainer.state.global_step, max(1, int(facts["steps"]))
    slow_lr, fast_lr = _lr(learning_rate), _lr(float(facts["learning_rate"]))
    details = dict(slow_change=slow_change, fast_change=fast_change, steps_slow=steps_slow, steps_fast=steps_fast,
                   ratio=slow_change / fast_change if fast_change else math.inf)
    if not slow_change < max_ratio * fast_change:
        return verdict(False, f"your biases moved {slow_change:.2e} on average, the {fast_lr} run's "
                               f"{fast_change:.2e}: a {slow_lr} run should move them far less. Did it start from "
                               "the pre-trained model (a fresh load_model), not from an already trained one?",
                        **details)
    first = (f"lr {slow_lr}: {_first_epoch_text(history_frame(slow_trainer).iloc[0].to_dict())}; "
             f"lr {fast_lr}: {_first_epoch_text(facts['first_epoch'])}")
    return verdict(True, f"lr {slow_lr} on the {len(trainable)} BitFit tensors for {steps_slow} steps. "
                          f"Mean |b - b0|: {slow_change:.2e} at lr {slow_lr} ({slow_change / steps_slow:.1e} per step) "
                          f"vs {fast_change:.2e} at lr {fast_lr} ({steps_fast} steps to the kept epoch, "
                          f"{fast_change / steps_fast:.1e} per step). First epoch: {first}.", **details)


# ---------------------------------------------------------------------------
# 03-Inference
# ---------------------------------------------------------------------------


@never_raises
def check_key_bias_gradient(model: torch.nn.Module, grad_batch: Mapping[str, torch.Tensor] | None,
                            grads: Mapping[str, torch.Tensor] | None) -> CheckResult:
    """Exercise 03.1: the student's gradients of one batch vs a fresh autograd pass.

    The reference is ``torch.autograd.grad`` of the loss on ``grad_batch`` in eval mode
    (no dropout) with respect to every query and key bias. The verdict also reports
    how small the key biases' gradients are next to the query biases'.
    """
    if (missing := unfilled(grad_batch=grad_batch, grads=grads)) is not None:
        return missing
    if "labels" not in grad_batch or "input_ids" not in grad_batch:
        return verdict(False, "grad_batch needs 'input_ids' (from the tokenizer) and 'labels' (a tensor of 0/1), "
                               "so that model(**grad_batch) returns a loss.")
    groups = bu.parameter_groups(model)
    names = {g: [n for n, group in groups.items() if group == g] for g in ("query", "key")}
    absent = [n for g in names for n in names[g] if n not in grads]
    if absent:
        return verdict(False, f"grads has no entry for {absent[0]} (and {len(absent) - 1} more query/key biases): "
                               "collect {name: param.grad.clone()} for every parameter after .backward().")
    params = dict(model.named_parameters())
    wanted = names["query"] + names["key"]
    was_training, flags = model.training, {n: params[n].requires_grad for n in wanted}
    device = next(model.parameters()).device
    try:
        model.eval()
        for n in wanted:
            params[n].requires_grad_(True)
        loss = model(**{k: v.to(device) for k, v in grad_batch.items()}).loss
        reference = torch.autograd.grad(loss, [params[n] for n in wanted])
    finally:
        model.train(was_training)
        for n, flag in flags.items():
            params[n].requires_grad_(flag)
    ref = torch.cat([g.detach().flatten().cpu() for g in reference])
    mine = torch.cat([grads[n].detach().flatten().cpu().to(ref.dtype) for n in wanted])
    scale = float(ref.abs().max())
    if not torch.allclose(mine, ref, rtol=1e-3, atol=1e-4 * scale):
        factor = (mine @ ref / (ref @ ref)).item() if scale else float("nan")
        if round(factor) >= 2 and math.isclose(factor, round(factor), rel_tol=1e-2):
            hint = (f" Yours are {round(factor)}x the reference: gradients add up over backward passes, so call "
                    "model.zero_grad() before loss.backward().")
        else:
            hint = (" Call model.eval() first (dropout draws a new mask on every pass) and model.zero_grad() "
                    "(gradients add up), then one loss.backward() on this batch.")
        return verdict(False, f"your gradients differ from a fresh backward pass on `grad_batch`.{hint}")
    n_query = len(names["query"])
    query_max = max(g.abs().max().item() for g in reference[:n_query])
    key_max = max(g.abs().max().item() for g in reference[n_query:])
    return verdict(True, f"your gradients match autograd. Largest |gradient|: query biases {query_max:.2e}, "
                          f"key biases {key_max:.2e} ({key_max / query_max:.1e} of query's: zero up to rounding).",
                    query_max=query_max, key_max=key_max, key_to_query=key_max / query_max)


@never_raises
def check_pack_refusal(other_model: torch.nn.Module | None, pack_path, refusal: Any,
                       unchanged: bool | None) -> CheckResult:
    """Exercise 03.2: a pack loaded onto a base it was not trained on is refused, model untouched.

    The check repeats ``packs.load_bias_checkpoint(other_model, pack_path)`` itself (restoring
    the model if it were accepted), compares the error with the student's ``refusal``
    and verifies that the model is bit-for-bit unchanged.
    """
    if (missing := unfilled(other_model=other_model, refusal=refusal, unchanged=unchanged)) is not None:
        return missing
    before = {n: p.detach().clone() for n, p in other_model.named_parameters()}
    try:
        packs.load_bias_checkpoint(other_model, pack_path)
    except ValueError as err:
        error = err
    else:
        with torch.no_grad():
            for n, p in other_model.named_parameters():
                p.copy_(before[n])
        return verdict(False, "this model accepts the pack: it is the pack's own base model. Build a different "
                               "base, e.g. type(model)(model.config) (same architecture, other weights).")
    still = all(torch.equal(before[n], p) for n, p in other_model.named_parameters())
    if not still:
        return verdict(False, "load_bias_checkpoint changed the model before refusing: report this as a bug.")
    if str(refusal) != str(error):
        return verdict(False, "`refusal` is not the error load_bias_checkpoint raises for this model. Catch it: "
                               "try: packs.load_bias_checkpoint(other_model, pack_path) "
                               "except ValueError as err: refusal = err")
    if unchanged is not True:
        return verdict(False, "`unchanged` should be computed from a copy of the parameters taken before the call "
                               "and compared with torch.equal after it; look again.")
    return verdict(True, f"refused with the model unchanged. The reason: {error}")


@never_raises
def check_wrong_pair(model: torch.nn.Module, tokenizer, pair: Sequence[str] | None, label: str | None,
                     known_pairs: Sequence[Sequence[str]] = ()) -> CheckResult:
    """Exercise 03.3: a pair of the student's own that the model gets wrong.

    Args:
        pair: ``(sentence1, sentence2)`` written by the student.
        label: the true label in the student's judgement (a name from ``model.config.id2label``).
        known_pairs: pairs that do not count (e.g. MRPC dev).
    """
    if (missing := unfilled(my_pair=pair, my_label=label)) is not None:
        return missing
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) and s.strip() for s in pair)):
        return verdict(False, 'my_pair must be two non-empty sentences: ("sentence 1", "sentence 2").')
    names = list(model.config.id2label.values())
    if label not in names:
        return verdict(False, f"my_label must be one of {names}, got {label!r}.")
    if tuple(pair) in {tuple(p) for p in known_pairs}:
        return verdict(False, "this pair is from MRPC dev: write a pair of your own.")
    predicted, probs = predict(model, tokenizer, [tuple(pair)])
    p_text = ", ".join(f"p({n})={probs[0][i]:.3f}" for i, n in enumerate(names))
    if predicted[0] == label:
        return verdict(False, f"the model agrees with you ({predicted[0]}; {p_text}). Try a pair whose words "
                               "overlap but whose meaning differs: swap who did what, change a number, add 'not'.")
    return verdict(True, f"the model says {predicted[0]} ({p_text}), you say {label}.",
                    predicted=predicted[0], probabilities=probs[0].tolist())
