"""apply_bitfit, count_parameters, parameter_table: exact selection and honest counts."""

import pytest
import torch
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

import bitfit_utils as bu
from lab.methods import apply_lora, parameter_table, setup_method
from lab.handout import HandoutBitFitLoRA, handout_adaptive_bias_initialization
from lab.registry import mask_gradients, random_parameter_mask
from conftest import TINY, tiny_bert


@pytest.fixture(scope="module")
def bert_base():
    """BERT-base shape with random weights (no download)."""
    return BertForSequenceClassification(BertConfig(num_labels=2))


def test_bert_base_counts_match_paper_arithmetic(bert_base):
    assert bu.count_parameters(bert_base)[1] == 109_483_778
    report = bu.apply_bitfit(bert_base)
    assert (report.trainable, report.total) == (104_450, 109_483_778)
    assert round(report.percent, 4) == 0.0954
    table = bu.parameter_table(bert_base)
    encoder = [g for g in bu.BIAS_GROUPS if g in table.index and g not in ("embeddings_layernorm", "pooler")]
    assert table.loc[encoder, "trainable"].sum() == 101_376
    assert table.loc["embeddings_layernorm", "trainable"] == 768
    assert table.loc["pooler", "trainable"] == 768
    assert table.loc["head", "trainable"] == 1_538
    assert table.loc["total", "trainable"] == 104_450
    assert table.loc["total", "parameters"] == 109_483_778


def test_02s_lora_count_is_what_apply_lora_adds_to_bert_base():
    """02's PEFT cell gives LoRA's count on BERT-base (r=8 on query and value) as arithmetic: it is apply_lora's."""
    import json
    from pathlib import Path

    cell = json.loads((Path(__file__).parent.parent / "02-Train.ipynb").read_text())["cells"][2]
    assert "12 層 × 2 × 2·8·768 = 294,912 個" in "".join(cell["source"]) and 12 * 2 * 2 * 8 * 768 == 294_912
    model = apply_lora(BertForSequenceClassification(BertConfig(num_labels=2)))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 294_912


def test_bert_base_paper_subset(bert_base):
    report = bu.apply_bitfit(bert_base, ["query", "intermediate"])
    assert report.trainable == 47_618
    report = bu.apply_bitfit(bert_base, ["query", "intermediate"], train_head=False)
    assert report.trainable == 46_080
    assert not any(p.requires_grad for p in bert_base.classifier.parameters())


def test_handout_snippet_double_counts_classifier_bias(model):
    """The handout adds classifier.bias once as a '.bias' and again as head: we count it once."""
    handout = sum(p.numel() for n, p in model.named_parameters() if ".bias" in n)
    handout += sum(p.numel() for p in model.classifier.parameters())
    report = bu.apply_bitfit(model)
    assert handout - report.trainable == model.classifier.bias.numel()
    assert report.trainable == bu.count_parameters(model)[0]


def test_groups_match_exactly_not_by_substring(model):
    bu.apply_bitfit(model, ["output"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.encoder.layer.0.output.dense.bias" in trainable
    assert "bert.encoder.layer.0.attention.output.dense.bias" not in trainable
    assert "bert.encoder.layer.0.output.LayerNorm.bias" not in trainable
    assert "classifier.weight" in trainable  # head


def test_every_group_selects_its_own_biases(model):
    for group in bu.BIAS_GROUPS[:10]:  # BERT's ten
        bu.apply_bitfit(model, [group], train_head=False)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all(n.endswith(".bias") for n in names), group
        expected = 1 if group in ("embeddings_layernorm", "pooler") else TINY["num_hidden_layers"]
        assert len(names) == expected, (group, names)


def test_unknown_group_lists_valid_names(model):
    with pytest.raises(ValueError, match="Unknown bias group.*query, key, value"):
        bu.apply_bitfit(model, ["querry"])
    with pytest.raises(ValueError, match="Unknown bias group"):
        bu.apply_bitfit(model, [])


def test_distilbert_roles_and_generic_head():
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=120, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=64))
    table = bu.apply_bitfit(model).to_frame()
    assert "pooler" not in table.index
    for group in ("query", "key", "value", "attention_output", "attention_layernorm",
                  "intermediate", "output", "output_layernorm"):
        assert table.loc[group, "trainable"] == 2 * (32 if group == "intermediate" else 16)
    head = {n for n, g in bu.parameter_groups(model).items() if g == "head"}
    assert head == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}
    with pytest.raises(ValueError, match="no \\['pooler'\\] module"):
        bu.apply_bitfit(model, ["pooler"])


def test_roberta_two_layer_head_and_electra_projection():
    torch.manual_seed(0)
    roberta = RobertaForSequenceClassification(RobertaConfig(**TINY, pad_token_id=1))
    bu.apply_bitfit(roberta)
    head = {n for n, g in bu.parameter_groups(roberta).items() if g == "head"}
    assert head == {"classifier.dense.weight", "classifier.dense.bias",
                    "classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert all(p.requires_grad for p in roberta.classifier.parameters())
    electra = ElectraForSequenceClassification(ElectraConfig(**TINY, embedding_size=8))
    report = bu.apply_bitfit(electra)
    assert report.to_frame().loc["embeddings_projection", "trainable"] == 16


def test_unknown_bias_is_never_skipped(model):
    """A bias no role table knows gets a generic group named by its module, and 'all' trains it."""
    model.bert.encoder.layer[0].extra = nn.Linear(16, 16)
    model.bert.encoder.layer[1].odd = nn.Conv1d(16, 4, 1)
    groups = bu.parameter_groups(model)
    assert groups["bert.encoder.layer.0.extra.bias"] == "other_linear"
    assert groups["bert.encoder.layer.1.odd.bias"] == "other_conv"
    report = bu.apply_bitfit(model)
    assert model.bert.encoder.layer[0].extra.bias.requires_grad and model.bert.encoder.layer[1].odd.bias.requires_grad
    assert report.trainable == bu.apply_bitfit(tiny_bert()).trainable + 16 + 4
    bu.apply_bitfit(model, ["other_linear"], train_head=False)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["bert.encoder.layer.0.extra.bias"]


def test_model_without_any_bias_slot_is_rejected():
    with pytest.raises(ValueError, match="no bias and no Linear or LayerNorm.*Check the model"):
        bu.apply_bitfit(nn.Sequential(nn.Embedding(3, 3)))


def _strip_biases(model):
    for _, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and "classifier" not in _:
            module.bias = None
    return model


def test_model_without_biases_is_a_clear_error(inputs):
    model = _strip_biases(tiny_bert())
    with pytest.raises(ValueError, match="have no bias.*add_missing_biases=True"):
        bu.apply_bitfit(model)


def test_add_missing_biases_keeps_outputs_unchanged(inputs):
    model = _strip_biases(tiny_bert())
    with torch.no_grad():
        before = model(**inputs).logits.clone()
    report = bu.apply_bitfit(model, add_missing_biases=True)
    with torch.no_grad():
        after = model(**inputs).logits
    assert torch.equal(before, after)
    assert report.trainable == bu.apply_bitfit(tiny_bert()).trainable
    # the new biases really are used: moving one changes the output
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.bias.fill_(1.0)
        assert not torch.allclose(model(**inputs).logits, before)


def test_bitfit_trains_only_selected(model, inputs):
    bu.apply_bitfit(model, ["query", "intermediate"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    loss = model(**inputs, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    groups = bu.parameter_groups(model)
    assert changed and {groups[n] for n in changed} <= {"query", "intermediate", "head"}


def test_parameter_table_sums(model):
    bu.apply_bitfit(model, ["key"])
    table = bu.parameter_table(model)
    assert table.loc["total", "parameters"] == bu.count_parameters(model)[1]
    assert table.drop("total")["parameters"].sum() == table.loc["total", "parameters"]
    assert table.loc["total", "trainable"] == bu.count_parameters(model)[0]
    assert abs(table.drop("total")["share_%"].sum() - 100) < 0.01


def test_random_mask_matches_count_without_replacement(model, inputs):
    n = bu.apply_bitfit(tiny_bert()).trainable
    for p in model.parameters():
        p.requires_grad = False
    masks = random_parameter_mask(model, n, seed=3)
    assert sum(int(m.sum()) for m in masks.values()) == n  # without replacement: exactly n distinct
    mask_gradients(model, masks)
    for p in model.classifier.parameters():
        p.requires_grad = True
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    for name, mask in masks.items():
        param = dict(model.named_parameters())[name]
        assert torch.equal(param[~mask], before[name][~mask])
    with pytest.raises(ValueError, match="n must be"):
        random_parameter_mask(model, 0)


def test_setup_method_baselines(model):
    total = bu.count_parameters(model)[1]
    assert setup_method(model, "full") == (total, total)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert setup_method(model, "frozen") == (head, total)
    assert setup_method(model, "bitfit") == (bu.apply_bitfit(tiny_bert()).trainable, total)
    with pytest.raises(ValueError, match="'frozen', 'bitfit' or 'full'"):
        setup_method(model, "lora")


def test_lora_groups_and_the_handouts_class_losing_biases():
    lora_all = parameter_table(apply_lora(tiny_bert(), r=4, bias="all"))
    lora_none = parameter_table(apply_lora(tiny_bert(), r=4, bias="none"))
    handout = parameter_table(HandoutBitFitLoRA(tiny_bert(), lora_r=4).peft_model)
    lora_r4 = 2 * 2 * 4 * (16 + 16)  # layers x (query, value) x r x (in + out)
    bias_rows = [g for g in bu.BIAS_GROUPS if g in lora_all.index]
    assert (lora_all.loc[bias_rows, "trainable"] == lora_all.loc[bias_rows, "parameters"]).all()
    assert (lora_none.loc[bias_rows, "trainable"] == 0).all()
    assert lora_all.loc["head", "trainable"] == lora_none.loc["head", "trainable"] == 16 * 2 + 2
    # the handout's class: LoRA matrices only, no bias, no head
    assert handout.loc["lora", "trainable"] == handout.loc["total", "trainable"] == lora_r4
    assert handout.loc["head", "trainable"] == 0
    with pytest.raises(ValueError, match="'none'.*'all'"):
        apply_lora(tiny_bert(), bias="lora_only")


def test_handout_adaptive_init_replaces_pretrained_biases(model):
    bu.apply_bitfit(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".bias")}
    handout_adaptive_bias_initialization(model, "classification")
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)
    drawn = torch.cat([after[n].detach().flatten() for n in before])
    assert abs(drawn.std().item() - 0.01) < 0.003  # fresh N(0, 0.01) noise, whatever was there before


def test_handout_class_adapter_file_lacks_the_head(tmp_path):
    """Its random head is not saved, so the trained model cannot be rebuilt from its checkpoint."""
    from safetensors import safe_open

    saved = {}
    for name, model in (("handout", HandoutBitFitLoRA(tiny_bert()).peft_model),
                        ("lora", apply_lora(tiny_bert()))):
        model.save_pretrained(tmp_path / name)
        with safe_open(str(next((tmp_path / name).glob("*.safetensors"))), "pt") as f:
            saved[name] = [k for k in f.keys() if "lora_" not in k]
    assert saved["handout"] == []
    assert sorted(saved["lora"]) == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]


def test_plain_pytorch_bitfit_sets_the_flags_apply_bitfit_sets():
    by_hand, by_library = tiny_bert(), tiny_bert()
    bu.bitfit_in_plain_pytorch(by_hand)
    report = bu.apply_bitfit(by_library)
    assert [p.requires_grad for p in by_hand.parameters()] == [p.requires_grad for p in by_library.parameters()]
    assert report.bias_terms == list(dict.fromkeys(bu.BERT_ROLES.values()))
    assert not hasattr(by_library, "bitfit_bias_terms")  # the report carries it; the model gets no attribute


def test_register_roles_extends_the_groups_and_refuses_clashes(monkeypatch):
    monkeypatch.setattr(bu, "_ROLES", dict(bu._ROLES))
    monkeypatch.setattr(bu, "BIAS_GROUPS", bu.BIAS_GROUPS)
    bu.register_roles({"mixer.in_proj": "mixer"}, groups=["mixer"])
    assert bu.BIAS_GROUPS[-len(bu.GENERIC_GROUPS) - 1:] == ("mixer", *bu.GENERIC_GROUPS)
    assert bu.module_role("layers.2.mixer.in_proj") == "mixer"
    bu.register_roles({"mixer.in_proj": "mixer"})  # the same again: nothing changes
    with pytest.raises(ValueError, match="already registered with another role"):
        bu.register_roles({"attention.self.query": "key"})
    with pytest.raises(ValueError, match="pass them in groups"):
        bu.register_roles({"x.y": "unknown_group"})
    assert bu.module_role("x.y") is None
