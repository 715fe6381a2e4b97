"""apply_bitfit on every model family: every bias found, roles named, biases added where there are none.

Each family is a tiny random model (no download). The expected counts are computed here from
plain ``named_parameters``/``named_modules`` and the family's head, never through bitfit_utils.
"""

import pytest
import torch
import transformers as tf
from torch import nn

import bitfit_utils as bu
from lab import methods, packs
from lab.analysis import bias_changes
from lab.methods import BEFT_BERT_ALL_LINEAR, apply_beft

T = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
         max_position_embeddings=64, num_labels=2)
DECODER = dict(T, num_key_value_heads=1, pad_token_id=0)  # grouped-query attention; pad id to classify batches
BERT_ROLES = {"query", "key", "value", "attention_output", "attention_layernorm", "intermediate", "output",
              "output_layernorm", "embeddings_layernorm"}
LLAMA_ROLES = {"query", "key", "value", "attention_output", "gate", "intermediate", "output"}

# family: (model class, config, head modules (top-level names), bias groups the body must have, has biases)
FAMILIES = {
    "bert": (tf.BertForSequenceClassification, tf.BertConfig(**T), {"classifier"}, BERT_ROLES | {"pooler"}, True),
    "roberta": (tf.RobertaForSequenceClassification, tf.RobertaConfig(**T, pad_token_id=1), {"classifier"},
                BERT_ROLES, True),
    "electra": (tf.ElectraForSequenceClassification, tf.ElectraConfig(**T, embedding_size=8), {"classifier"},
                BERT_ROLES | {"embeddings_projection"}, True),
    "distilbert": (tf.DistilBertForSequenceClassification,
                   tf.DistilBertConfig(vocab_size=120, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                       max_position_embeddings=64), {"pre_classifier", "classifier"}, BERT_ROLES, True),
    "deberta_v2": (tf.DebertaV2ForSequenceClassification,
                   tf.DebertaV2Config(**T, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                                      norm_rel_ebd="layer_norm", share_att_key=False),
                   {"pooler", "classifier"}, BERT_ROLES | {"relative_position"}, True),
    "albert": (tf.AlbertForSequenceClassification, tf.AlbertConfig(**T, embedding_size=8), {"classifier"},
               BERT_ROLES | {"pooler", "embeddings_projection"}, True),
    "modernbert": (tf.ModernBertForSequenceClassification,
                   tf.ModernBertConfig(**T, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                       sep_token_id=2), {"head", "classifier"},
                   {"query_key_value", "attention_output", "attention_layernorm", "intermediate", "output",
                    "output_layernorm", "embeddings_layernorm", "final_layernorm"}, False),
    "gpt2": (tf.GPT2ForSequenceClassification,
             tf.GPT2Config(vocab_size=120, n_embd=16, n_layer=2, n_head=2, n_positions=64, num_labels=2,
                           pad_token_id=0, bos_token_id=1, eos_token_id=1), {"score"},
             {"attention_layernorm", "query_key_value", "attention_output", "output_layernorm", "intermediate",
              "output", "final_layernorm"}, True),
    "llama": (tf.LlamaForSequenceClassification, tf.LlamaConfig(**DECODER), {"score"}, LLAMA_ROLES, False),
    "qwen2": (tf.Qwen2ForSequenceClassification, tf.Qwen2Config(**DECODER), {"score"}, LLAMA_ROLES, False),
    "t5": (tf.T5ForSequenceClassification,
           tf.T5Config(vocab_size=120, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, num_labels=2,
                       feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
           {"classification_head"}, LLAMA_ROLES | {"cross_attention"}, False),
    "vit": (tf.ViTForImageClassification,
            tf.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         image_size=8, patch_size=4, num_labels=2), {"classifier"},
            BERT_ROLES - {"embeddings_layernorm"} | {"embeddings_projection", "final_layernorm"}, True),
}


def build(family: str, seed: int = 0) -> nn.Module:
    cls, config, *_ = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.config._name_or_path = f"tiny-{family}"
    return model


def inputs(family: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=gen)}
    ids = torch.randint(5, 120, (2, 8), generator=gen)
    ids[:, -1] = 1  # T5 classifies at its end-of-sequence token (id 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def is_head(family: str, name: str) -> bool:
    return name.split(".")[0] in FAMILIES[family][2]


def logits(model, family):
    with torch.no_grad():
        return model(**inputs(family)).logits.clone()


def absent_bias_count(model, family) -> int:
    """Scalars of the zero biases add_missing_biases must add: biasless Linear and affine LayerNorm of the body."""
    count = 0
    for path, module in model.named_modules():
        if not path or is_head(family, path) or getattr(module, "bias", 0) is not None:
            continue
        if isinstance(module, nn.Linear):
            count += module.out_features
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            count += module.weight.numel()
    return count


@pytest.mark.parametrize("family", FAMILIES)
def test_all_trains_every_body_bias_and_the_head(family):
    model = build(family)
    has_biases = FAMILIES[family][4]
    params = dict(model.named_parameters())
    body_biases = sum(p.numel() for n, p in params.items() if n.endswith(".bias") and not is_head(family, n))
    head = sum(p.numel() for n, p in params.items() if is_head(family, n))
    added = absent_bias_count(model, family)
    assert (added == 0) == has_biases
    if not has_biases and body_biases == 0:  # no bias anywhere in the body: refused, nothing frozen
        with pytest.raises(ValueError, match="have no bias at all.*add_missing_biases=True"):
            bu.apply_bitfit(model)
        assert all(p.requires_grad for p in model.parameters())
    elif not has_biases:  # some layers have biases (Qwen2: q, k, v): those train, the others are named
        partial = bu.apply_bitfit(build(family))
        assert partial.trainable == body_biases + head and partial.without_bias
        assert "add_missing_biases=True" in str(partial) and partial.without_bias[0] in str(partial)
    before = logits(model, family)

    report = bu.apply_bitfit(model, add_missing_biases=not has_biases)

    assert report.trainable == body_biases + added + head
    expected = {n for n, _ in model.named_parameters() if n.endswith(".bias") or is_head(family, n)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert torch.equal(logits(model, family), before), "zero biases must leave the outputs bitwise unchanged"
    groups = bu.parameter_groups(model)
    assert {n for n, g in groups.items() if g == "head"} == {n for n in expected if is_head(family, n)}
    assert {g for n, g in groups.items() if n in expected and g != "head"} == FAMILIES[family][3]
    table = bu.parameter_table(model)
    assert table.loc["total", "trainable"] == report.trainable
    assert table.drop("total")["parameters"].sum() == bu.count_parameters(model)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_pack_round_trips_exactly(family, tmp_path):
    model = build(family)
    bu.apply_bitfit(model, add_missing_biases=not FAMILIES[family][4])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # "training"
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned_logits = logits(model, family)
    path = packs.save_bias_checkpoint(model, tmp_path / f"{family}.safetensors", task="mrpc")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(-3.0)
    packs.load_bias_checkpoint(model, path)
    assert all(torch.equal(saved[n], p) for n, p in model.named_parameters())
    fresh = build(family)  # the same pre-trained weights
    if not FAMILIES[family][4]:
        with pytest.raises(ValueError, match=r"add_missing_biases=True\) first"):
            packs.load_bias_checkpoint(fresh, path)
        bu.apply_bitfit(fresh, add_missing_biases=True)
    packs.load_bias_checkpoint(fresh, path)
    assert torch.equal(logits(fresh, family), tuned_logits)


def test_partially_biased_qwen2_pack_round_trips_onto_a_fresh_copy_of_the_base(tmp_path):
    """Plain apply_bitfit on Qwen2 (q/k/v biases only, none added): the pack holds those and the head."""
    tuned = build("qwen2")
    report = bu.apply_bitfit(tuned)
    assert report.without_bias and all(".self_attn.q_proj" not in path for path in report.without_bias)
    assert report.bias_terms == ["query", "key", "value"]  # not the groups whose layers all lack a bias
    assert str(report).startswith("BitFit (query, key, value): ")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # "training"
    params = dict(tuned.named_parameters())
    path = packs.save_bias_checkpoint(tuned, tmp_path / "qwen2.safetensors", task="mrpc")

    tensors, meta = packs.read_bias_checkpoint(path)
    expected = {n for n in params if n.endswith(".bias") or is_head("qwen2", n)}
    assert set(tensors) == set(meta["trained"]) == expected and meta["bias_groups"] == ["query", "key", "value"]
    assert {n.split(".")[-2] for n in expected if n.endswith(".bias")} == {"q_proj", "k_proj", "v_proj"}
    assert all(torch.equal(tensors[n], params[n]) for n in expected)

    fresh = build("qwen2")  # the same base, as loaded: no apply_bitfit, no added biases
    assert not torch.equal(logits(fresh, "qwen2"), logits(tuned, "qwen2"))
    packs.load_bias_checkpoint(fresh, path)
    assert all(torch.equal(p, params[n]) for n, p in fresh.named_parameters())
    assert torch.equal(logits(fresh, "qwen2"), logits(tuned, "qwen2"))

    padded = build("qwen2")  # zero biases added: the pack has no values for them, so it is refused (a pack
    bu.apply_bitfit(padded, add_missing_biases=True)  # loaded there would leave whatever they hold behind)
    with pytest.raises(ValueError, match="lacks bias/head tensors"):
        packs.load_bias_checkpoint(padded, path)


def test_explicit_groups_on_other_families():
    gpt2 = build("gpt2")
    report = bu.apply_bitfit(gpt2, ["query_key_value"], train_head=False)
    assert report.trainable == 2 * 3 * 16  # two layers' fused q/k/v bias
    with pytest.raises(ValueError, match="no \\['query'\\] module.*Groups it has: .*query_key_value"):
        bu.apply_bitfit(gpt2, ["query"])
    qwen2 = build("qwen2")  # biases on q, k, v only: BitFit on them needs no added biases
    report = bu.apply_bitfit(qwen2, ["query", "key", "value"], train_head=False)
    assert report.trainable == 2 * (16 + 8 + 8)
    with pytest.raises(ValueError, match="have no bias at all.*add_missing_biases=True"):
        bu.apply_bitfit(qwen2, ["output"])  # the FFN's output layer has no bias in Qwen2
    report = bu.apply_bitfit(build("qwen2"))  # all groups: the q/k/v biases it has, the others named
    assert report.trainable == 2 * (16 + 8 + 8) + bu.parameter_table(qwen2).loc["head", "parameters"]
    assert any(path.endswith("o_proj") for path in report.without_bias)
    report = bu.apply_bitfit(build("qwen2"), ["query", "output"], train_head=False)  # one with biases, one without
    assert report.trainable == 2 * 16 and report.bias_terms == ["query"]
    assert [path.rpartition(".")[2] for path in report.without_bias] == ["down_proj", "down_proj"]
    llama = build("llama")
    report = bu.apply_bitfit(llama, ["gate"], train_head=False, add_missing_biases=True)
    assert report.trainable == 2 * 32 and llama.model.layers[0].mlp.up_proj.bias is None  # only what was selected


def test_bias_changes_has_a_row_per_layer_on_gpt2_and_t5():
    base, tuned = build("gpt2"), build("gpt2")
    with torch.no_grad():
        tuned.transformer.h[1].attn.c_attn.bias.add_(2.0)
        tuned.transformer.ln_f.bias.sub_(0.5)
    changes = bias_changes(base, tuned)
    assert list(changes.index) == ["0", "1", "final"]
    assert changes.loc["1", "query_key_value"] == pytest.approx(2.0) and changes.loc["0", "query_key_value"] == 0
    assert changes.loc["final", "final_layernorm"] == pytest.approx(0.5)
    base, tuned = build("t5"), build("t5")
    for model in (base, tuned):
        bu.apply_bitfit(model, add_missing_biases=True)
    with torch.no_grad():
        tuned.transformer.decoder.block[1].layer[1].EncDecAttention.q.bias.add_(4.0)  # 1 of 4 equal-size vectors
    changes = bias_changes(base, tuned)
    assert list(changes.index) == ["0", "1", "decoder.0", "decoder.1"]
    assert changes.loc["decoder.1", "cross_attention"] == pytest.approx(1.0)
    assert changes.loc["1", "query"] == 0


def test_beft_adds_zero_vectors_on_the_targets_only():
    from conftest import tiny_bert

    for targets, per_layer in ((None, 16), (BEFT_BERT_ALL_LINEAR, 3 * 16 + 16 + 32 + 16)):
        model = tiny_bert()
        inp = {"input_ids": torch.randint(5, 120, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
        before = logits_of(model, inp)
        linear_out = {n: m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        wrapped = apply_beft(model, targets)
        groups = methods.parameter_groups(wrapped)
        beft = {n: p for n, p in wrapped.named_parameters() if ".beft_bias." in n}
        targeted = {n.removeprefix("base_model.model.").split(".beft_bias.")[0] for n in beft}
        assert sum(p.numel() for p in beft.values()) == sum(linear_out[t] for t in targeted) == 2 * per_layer
        assert all(not p.any() for p in beft.values())  # zero-initialised
        head = 16 * 2 + 2
        trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
        assert set(beft) <= trainable and {groups[n] for n in trainable} == {"beft", "head"}
        assert bu.count_parameters(wrapped)[0] == 2 * per_layer + head
        assert {groups[n] for n in beft} == {"beft"}
        table = methods.parameter_table(wrapped)
        assert table.loc["beft", "trainable"] == 2 * per_layer and table.loc["head", "trainable"] == head
        assert torch.equal(logits_of(wrapped, inp), before), "zero vectors leave the outputs unchanged at step 0"
    assert targeted == {f"bert.encoder.layer.{i}.{m}" for i in (0, 1) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")}


def test_beft_on_all_linear_layers_steps_like_bitfit_on_their_biases():
    """b' sits where b does (y = W x + b + b'), so one Adam step moves the outputs as BitFit on those biases."""
    from conftest import tiny_bert

    inp = {"input_ids": torch.randint(5, 120, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    labels = torch.tensor([0, 1, 1, 0])
    bitfit = tiny_bert()
    bu.apply_bitfit(bitfit, ["query", "key", "value", "attention_output", "intermediate", "output"])
    beft = apply_beft(tiny_bert(), BEFT_BERT_ALL_LINEAR)
    assert bu.count_parameters(beft)[0] == bu.count_parameters(bitfit)[0]
    for model in (bitfit, beft):
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model(**inp, labels=labels).loss.backward()  # eval mode: no dropout, the same forward pass
        optimizer.step()
    assert torch.allclose(logits_of(bitfit, inp), logits_of(beft, inp), atol=1e-5)
    assert not torch.allclose(logits_of(tiny_bert(), inp), logits_of(bitfit, inp), atol=1e-4)  # it did move


def logits_of(model, inp):
    with torch.no_grad():
        return model(**inp).logits.clone()
