"""Bias packs: safetensors, atomic, exact round trip, strict about the base model and the task's head."""

import json
import os
import struct

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import bitfit_utils as bu
from lab import packs
from lab.methods import setup_method
from conftest import tiny_bert


def _tune(model, seed=5):
    """Pretend to train: move every trainable tensor a little."""
    bu.apply_bitfit(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(state, model):
    return all(torch.equal(state[n], p) for n, p in model.named_parameters())


def test_round_trip_reproduces_logits_bitwise(tmp_path, inputs):
    tuned = _tune(tiny_bert())
    path = packs.save_bias_checkpoint(tuned, tmp_path / "mrpc.safetensors", task="mrpc", dev_f1=0.9)
    fresh = tiny_bert()  # same "pre-trained" weights, fresh head
    with torch.no_grad():
        assert not torch.equal(fresh(**inputs).logits, tuned(**inputs).logits)
    meta = packs.load_bias_checkpoint(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, tuned(**inputs).logits)
    assert meta["user"] == {"dev_f1": 0.9} and meta["task"] == "mrpc"
    assert meta["label_names"] == ["LABEL_0", "LABEL_1"]  # from model.config.id2label
    assert meta["bias_groups"][0] == "query" and meta["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    assert "torch" in meta["versions"]


def test_pack_holds_biases_and_head_only_no_pickle(tmp_path):
    tuned = _tune(tiny_bert())
    path = packs.save_bias_checkpoint(tuned, tmp_path / "p.safetensors", task="mrpc")
    tensors, meta = packs.read_bias_checkpoint(path)
    assert set(tensors) == {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert set(meta["trained"]) == set(tensors)
    assert not path.read_bytes().startswith(b"PK") and b"pickle" not in path.read_bytes()[:64]


def test_subset_pack_records_what_was_trained(tmp_path):
    model = tiny_bert()
    bu.apply_bitfit(model, ["query"])
    tensors, meta = packs.read_bias_checkpoint(packs.save_bias_checkpoint(model, tmp_path / "q.safetensors", task="mrpc"))
    groups = bu.parameter_groups(model)
    assert {groups[n] for n in meta["trained"]} == {"query", "head"}
    assert {groups[n] for n in tensors} == set(bu.BIAS_GROUPS[:10]) | {"head"}  # every bias is restored


def test_switching_to_a_head_only_pack_restores_pristine_biases(tmp_path, inputs):
    bitfit = _tune(tiny_bert(), seed=1)
    head_only = tiny_bert(seed=0)
    setup_method(head_only, "frozen")
    with torch.no_grad():
        head_only.classifier.weight.mul_(3)
    pa = packs.save_bias_checkpoint(bitfit, tmp_path / "a.safetensors", task="mrpc")
    pb = packs.save_bias_checkpoint(head_only, tmp_path / "b.safetensors", task="mrpc")
    base = tiny_bert()
    packs.load_bias_checkpoint(base, pa)
    packs.load_bias_checkpoint(base, pb)
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, head_only(**inputs).logits)


def test_bert_base_pack_is_under_half_a_megabyte(tmp_path):
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    bu.apply_bitfit(model)
    path = packs.save_bias_checkpoint(model, tmp_path / "bert.safetensors", task="mrpc")
    size = os.path.getsize(path)
    assert size < 500_000
    assert size >= 104_450 * 4  # every trainable fp32 scalar is in it


def test_write_is_atomic(tmp_path, monkeypatch):
    tuned = _tune(tiny_bert())
    path = packs.save_bias_checkpoint(tuned, tmp_path / "p.safetensors", task="mrpc")
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(packs.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        packs.save_bias_checkpoint(_tune(tiny_bert(), seed=9), path, task="mrpc")
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_pack_gets_the_permissions_of_any_new_file(tmp_path):
    mask = os.umask(0o022)
    try:
        path = packs.save_bias_checkpoint(_tune(tiny_bert()), tmp_path / "p.safetensors", task="mrpc")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: others may read the pack a class shares


def test_saving_an_untouched_model_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="call apply_bitfit"):
        packs.save_bias_checkpoint(tiny_bert().requires_grad_(False), tmp_path / "p.safetensors", task="mrpc")
    with pytest.raises(ValueError, match="biases and the head only"):
        packs.save_bias_checkpoint(tiny_bert(), tmp_path / "p.safetensors", task="mrpc")  # fully trainable


@pytest.fixture
def pack(tmp_path):
    return packs.save_bias_checkpoint(_tune(tiny_bert()), tmp_path / "p.safetensors", task="mrpc")


def _expect_refusal(model, path, match, **load_options):
    before = _state(model)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        packs.load_bias_checkpoint(model, path, **load_options)
    assert _same(before, model), "a refused pack must leave the model untouched"


def test_other_base_weights_are_refused(pack):
    _expect_refusal(tiny_bert(seed=1), pack, "fingerprint mismatch.*Load the base model")


def test_other_name_is_refused(pack):
    other = tiny_bert()
    other.config._name_or_path = "roberta-base"
    _expect_refusal(other, pack, "trained on .*this model is 'roberta-base'")


def test_other_dtype_is_refused(pack):
    _expect_refusal(tiny_bert().double(), pack, r"torch.float32, the model has .* torch.float64")


def test_extra_and_missing_keys_are_refused(tmp_path, pack):
    from safetensors.torch import load_file, save_file

    tensors, meta = packs.read_bias_checkpoint(pack)
    raw = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    # with a digest of what they hold, so the key checks themselves are reached
    extra = dict(tensors, **{"bert.encoder.layer.9.intermediate.dense.bias": torch.zeros(32)})
    save_file(extra, tmp_path / "extra.safetensors", metadata=dict(raw, digest=packs._tensor_digest(sorted(extra.items()))))
    _expect_refusal(tiny_bert(), tmp_path / "extra.safetensors", "tensors this model lacks")
    missing = {k: v for k, v in load_file(pack).items() if not k.startswith("classifier")}
    raw["digest"] = packs._tensor_digest(sorted(missing.items()))
    save_file(missing, tmp_path / "missing.safetensors", metadata=raw)
    _expect_refusal(tiny_bert(), tmp_path / "missing.safetensors", "lacks bias/head tensors")


def test_truncated_and_foreign_files_are_refused(tmp_path, pack):
    data = pack.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _expect_refusal(tiny_bert(), tmp_path / "cut.safetensors", "truncated.*Save the pack again")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    _expect_refusal(tiny_bert(), tmp_path / "junk.safetensors", "not a readable safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    _expect_refusal(tiny_bert(), tmp_path / "foreign.safetensors", "not a BitFit pack")
    _expect_refusal(tiny_bert(), tmp_path / "absent.safetensors", "Run 02-Train.ipynb first")


def test_flipped_byte_in_the_data_is_refused_before_any_copy(tmp_path, pack):
    data = bytearray(pack.read_bytes())
    data_start = 8 + int.from_bytes(data[:8], "little")  # the tensor bytes follow the JSON header
    for offset in (data_start, (data_start + len(data)) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01  # one bit
        (tmp_path / "flipped.safetensors").write_bytes(flipped)
        _expect_refusal(tiny_bert(), tmp_path / "flipped.safetensors", "is damaged.*digest.*Copy the pack again")
    with pytest.raises(ValueError, match="is damaged"):
        packs.read_bias_checkpoint(tmp_path / "flipped.safetensors")


def _rewrite_metadata(path, out, **changes):
    """A copy of the pack at ``path`` with some metadata changed (None: the key removed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    for key, value in changes.items():
        raw.pop(key) if value is None else raw.__setitem__(key, value)
    save_file(load_file(path), out, metadata=raw)
    return out


def test_packs_from_before_the_task_was_recorded_are_refused_with_what_to_do(tmp_path, pack):
    """Old packs (format bitfit-pack/1, no task, labels or sampled fingerprint) are refused: rewrite them with 02."""
    old = _rewrite_metadata(pack, tmp_path / "old.safetensors", format="bitfit-pack/1", task=None,
                            label_names=None, fingerprint_full=None)
    _expect_refusal(tiny_bert(), old, "older version of the lab.*task and labels.*section 5 of 02-Train")
    untasked = _rewrite_metadata(pack, tmp_path / "untasked.safetensors", task=None)
    _expect_refusal(tiny_bert(), untasked, "older version of the lab")


def test_saving_requires_a_task_and_labels_that_fit_the_head(tmp_path):
    model = _tune(tiny_bert())
    with pytest.raises(ValueError, match="task='mrpc'"):
        packs.save_bias_checkpoint(model, tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="differ from the model's config.id2label"):
        packs.save_bias_checkpoint(model, tmp_path / "p.safetensors", task="mrpc", label_names=["no", "yes"])
    model.config.id2label = {}
    with pytest.raises(ValueError, match="pass label_names"):
        packs.save_bias_checkpoint(model, tmp_path / "p.safetensors", task="mrpc")
    with pytest.raises(ValueError, match="must have MRPC's labels"):  # labels given, but not MRPC's
        packs.save_bias_checkpoint(model, tmp_path / "p.safetensors", task="mrpc", label_names=["no", "yes"])
    path = packs.save_bias_checkpoint(model, tmp_path / "p.safetensors", task="mrpc",
                                      label_names=["not_equivalent", "equivalent"])
    assert packs.read_bias_checkpoint(path)[1]["label_names"] == ["not_equivalent", "equivalent"]
    assert packs.save_bias_checkpoint(model, tmp_path / "t.safetensors", task="toy", label_names=["no", "yes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors", "t.safetensors"]  # any names for "toy"


def _labelled(model, names, task=None):
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    model.config.finetuning_task = task
    return model


def test_a_pack_for_a_known_task_must_have_that_task_s_labels(tmp_path):
    """A model loaded without task= has MRPC's names: it cannot be saved as an SST-2 pack."""
    mrpc_named = _labelled(_tune(tiny_bert()), ["not_equivalent", "equivalent"])
    with pytest.raises(ValueError, match=r"task 'sst2' must have SST-2's labels \['negative', 'positive'\].*"
                                         r"\['not_equivalent', 'equivalent'\].*load_model\(\.\.\., task='sst2'\)"):
        packs.save_bias_checkpoint(mrpc_named, tmp_path / "p.safetensors", task="sst2")
    with pytest.raises(ValueError, match="CoLA's labels"):  # the task's name as people write it
        packs.save_bias_checkpoint(mrpc_named, tmp_path / "p.safetensors", task="CoLA")
    swapped = _labelled(_tune(tiny_bert()), ["positive", "negative"])
    with pytest.raises(ValueError, match="in this order"):
        packs.save_bias_checkpoint(swapped, tmp_path / "p.safetensors", task="sst2")
    with pytest.raises(ValueError, match="MRPC's labels"):  # placeholder names, but 3 outputs for a 2-label task
        packs.save_bias_checkpoint(_tune(tiny_bert(num_labels=3)), tmp_path / "p.safetensors", task="mrpc")
    assert list(tmp_path.iterdir()) == []  # nothing written
    sst2_named = _labelled(_tune(tiny_bert()), ["negative", "positive"])
    sst2 = packs.save_bias_checkpoint(sst2_named, tmp_path / "s.safetensors", task="sst2")
    unnamed = packs.save_bias_checkpoint(_tune(tiny_bert()), tmp_path / "u.safetensors", task="sst2")  # LABEL_0, 1
    assert packs.read_bias_checkpoint(sst2)[1]["label_names"] == ["negative", "positive"]
    assert packs.read_bias_checkpoint(unnamed)[1]["label_names"] == ["LABEL_0", "LABEL_1"]


def test_checkpoint_bytes_saves_the_pack_for_the_run_s_task():
    """study.run measures a BitFit run's pack for the task the model was loaded for, not always MRPC."""
    from lab.registry import checkpoint_bytes, setup

    model, _ = setup(_labelled(tiny_bert(), ["negative", "positive"], task="sst2"), "bitfit", seed=0)
    assert checkpoint_bytes(model, "bitfit") > 0 and checkpoint_bytes(model, "bitfit", task="sst2") > 0
    with pytest.raises(ValueError, match="must have MRPC's labels"):
        checkpoint_bytes(model, "bitfit", task="mrpc")
    mrpc, _ = setup(_labelled(tiny_bert(), ["not_equivalent", "equivalent"]), "frozen", seed=0)  # no task: MRPC
    assert checkpoint_bytes(mrpc, "frozen") > 0


def test_a_head_of_another_size_is_refused_with_the_packs_task(pack):
    _expect_refusal(tiny_bert(num_labels=3), pack,
                    r"for task 'mrpc' with 2 labels \(LABEL_0, LABEL_1\); this model has a head of 3 outputs.*"
                    "num_labels=2")


def test_other_label_names_are_refused(pack):
    model = tiny_bert()
    model.config.id2label = {0: "equivalent", 1: "not_equivalent"}  # the same size, another order
    _expect_refusal(model, pack, "with 2 labels \\(LABEL_0, LABEL_1\\); this model has the labels equivalent")


def test_a_server_can_ask_for_the_task(pack):
    _expect_refusal(tiny_bert(), pack, "is for task 'mrpc', not 'sst2'", task="sst2")
    assert packs.load_bias_checkpoint(tiny_bert(), pack, task="mrpc")["task"] == "mrpc"
    with pytest.raises(ValueError, match="verify='quick'"):
        packs.load_bias_checkpoint(tiny_bert(), pack, verify="quick")


def test_metadata_that_is_not_json_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(ValueError, match="Metadata 'obj' \\(object\\) cannot be stored.*obj=str"):
        packs.save_bias_checkpoint(_tune(tiny_bert()), tmp_path / "p.safetensors", task="mrpc", obj=object())
    assert list(tmp_path.iterdir()) == []


def test_switching_packs_in_place(tmp_path, inputs):
    a = _tune(tiny_bert(), seed=1)
    b = _tune(tiny_bert(), seed=2)
    pa = packs.save_bias_checkpoint(a, tmp_path / "a.safetensors", task="mrpc")
    pb = packs.save_bias_checkpoint(b, tmp_path / "b.safetensors", task="mrpc")
    base = tiny_bert()
    with torch.no_grad():
        for path, ref in ((pa, a), (pb, b), (pa, a)):
            packs.load_bias_checkpoint(base, path)
            assert torch.equal(base(**inputs).logits, ref(**inputs).logits)


def test_missing_pack_renders_as_a_message_in_jupyter(tmp_path):
    with pytest.raises(packs.LabStepMissing) as info:
        packs.read_bias_checkpoint(tmp_path / "packs" / "mrpc_bitfit.safetensors")
    lines = info.value._render_traceback_()  # what IPython prints instead of a traceback
    assert len(lines) == 1 and "Run 02-Train.ipynb first" in lines[0]
    assert isinstance(info.value, FileNotFoundError)


# -- a base changed after a pack was loaded on it ---------------------------------------------------


def _change_through_data(model):
    model.bert.encoder.layer[0].attention.self.query.weight.data[0, 0] += 1  # bypasses the version counter


def _change_through_load_state_dict(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["bert.encoder.layer.0.attention.self.query.weight"][0, 0] += 1
    model.load_state_dict(state)


def _change_through_copy(model):
    weight = model.bert.encoder.layer[1].intermediate.dense.weight
    changed = weight.detach().clone()
    changed[-1, -1] += 1
    with torch.no_grad():
        weight.copy_(changed)


def _change_through_state_dict_view(model):
    model.state_dict()["bert.embeddings.word_embeddings.weight"][7, 3] += 1  # a detached view of the storage


@pytest.mark.parametrize("change", [_change_through_data, _change_through_load_state_dict, _change_through_copy,
                                    _change_through_state_dict_view], ids=lambda f: f.__name__.split("through_")[1])
def test_a_base_changed_after_a_successful_load_is_refused_until_restored(tmp_path, inputs, change):
    a, b = _tune(tiny_bert(), seed=1), _tune(tiny_bert(), seed=2)
    pa = packs.save_bias_checkpoint(a, tmp_path / "a.safetensors", task="mrpc")
    pb = packs.save_bias_checkpoint(b, tmp_path / "b.safetensors", task="mrpc")
    base = tiny_bert()
    original = _state(base)
    packs.load_bias_checkpoint(base, pa)  # both load on the untouched base: it was fingerprinted and accepted
    packs.load_bias_checkpoint(base, pb)
    frozen = {n for n, g in bu.parameter_groups(base).items() if g == "frozen"}

    change(base)

    changed = _state(base)
    assert [n for n in frozen if not torch.equal(changed[n], original[n])], "the change must hit a frozen weight"
    for path in (pa, pb):  # the pack that was loaded last too
        _expect_refusal(base, path, "frozen weights differ.*fingerprint mismatch")
    assert all(torch.equal(changed[n], p) for n, p in base.named_parameters() if n not in frozen)  # b's, bit for bit

    with torch.no_grad():  # the original base again: the packs fit again
        for n, p in base.named_parameters():
            if n in frozen:
                p.copy_(original[n])
    packs.load_bias_checkpoint(base, pa)
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, a(**inputs).logits)


# -- the sampled fingerprint (the default) and the full one -----------------------------------------


def _big_bert(seed=0):
    """Tensors larger than the 4,096 sampled elements (word embeddings 1000 x 16, FFN 16 x 320)."""
    return tiny_bert(seed, vocab_size=1000, intermediate_size=320)


def test_sampled_fingerprint_equals_the_full_one_on_small_tensors_only():
    small, big = tiny_bert(), _big_bert()
    assert max(p.numel() for p in small.parameters()) <= packs.SAMPLED_ELEMENTS
    assert packs.base_fingerprint(small, []) == packs.base_fingerprint(small, [], full=True)
    assert packs.base_fingerprint(big, []) != packs.base_fingerprint(big, [], full=True)
    names = packs.pack_names(big)
    assert packs.base_fingerprint(big, names) != packs.base_fingerprint(big, [])  # exclude is honoured


def _train_the_frozen_weights(model, other):
    model.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(input_ids=torch.randint(5, 1000, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    bu.apply_bitfit(model)


def _load_other_state_dict(model, other):
    model.load_state_dict(other.state_dict())


def _copy_other_weights(model, other):
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.copy_(other.bert.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("verify", ["sampled", "full"])
@pytest.mark.parametrize("rewrite", [None, _train_the_frozen_weights, _load_other_state_dict, _copy_other_weights],
                         ids=["other_checkpoint", "trained", "load_state_dict", "copy"])
def test_a_rewritten_or_other_base_is_refused_by_either_check(tmp_path, rewrite, verify):
    pack = packs.save_bias_checkpoint(_tune(_big_bert()), tmp_path / "p.safetensors", task="mrpc")
    if rewrite is None:
        model = _big_bert(seed=1)
    else:
        model = _big_bert()
        packs.load_bias_checkpoint(model, pack, verify=verify)  # its own base: accepted
        rewrite(model, _big_bert(seed=1))
    _expect_refusal(model, pack, f"{verify} fingerprint mismatch", verify=verify)


def test_an_edit_between_sampled_positions_is_caught_by_the_full_check_only(tmp_path, inputs):
    tuned = _tune(_big_bert())
    pack = packs.save_bias_checkpoint(tuned, tmp_path / "p.safetensors", task="mrpc")
    model = _big_bert()
    weight = model.bert.embeddings.word_embeddings.weight
    weight.data.view(-1)[1] += 1  # element 1: the sample reads elements 0, 3, 7, ... of these 16,000
    _expect_refusal(model, pack, "full fingerprint mismatch", verify="full")
    packs.load_bias_checkpoint(model, pack)  # the sampled check cannot see it (documented)
    weight.data.view(-1)[1] -= 1
    packs.load_bias_checkpoint(model, pack, verify="full")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, tuned(**inputs).logits)


def test_a_pack_records_its_head_and_loads_only_into_a_model_with_that_head(tmp_path, inputs):
    from lab.heads import set_pooling

    model = set_pooling(tiny_bert(), "mean")
    bu.apply_bitfit(model)
    _tune(model)
    path = packs.save_bias_checkpoint(model, tmp_path / "mean.safetensors", task="mrpc")
    assert packs.read_bias_checkpoint(path)[1]["head"] == "mean"
    with pytest.raises(ValueError, match="set_pooling"):  # a [CLS] model is refused, and left as it was
        packs.load_bias_checkpoint(tiny_bert(), path)
    fresh = set_pooling(tiny_bert(), packs.read_bias_checkpoint(path)[1]["head"])  # what load_pack_model does
    packs.load_bias_checkpoint(fresh, path)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, fresh(**inputs).logits)
    plain = tiny_bert()
    bu.apply_bitfit(plain)
    assert packs.read_bias_checkpoint(packs.save_bias_checkpoint(plain, tmp_path / "cls.safetensors",
                                                                 task="mrpc"))[1]["head"] == "cls"
