"""lab.serving: one frozen base, several tasks' packs; switching and mixed batches on a tiny random BERT."""

import copy
import json

import pytest
import torch

import bitfit_utils as bu
from lab import packs
from lab.serving import BaseChanged, MultiTaskBitFit
from lab.task_packs import synthetic_pack
from conftest import tiny_bert

LABELS = {"mrpc": 2, "sst2": 2, "nli3": 3}  # one head with three labels


def make_server(model, labels=LABELS):
    packs = {task: synthetic_pack(model, task, num_labels=k, scale=0.2, seed=i)
             for i, (task, k) in enumerate(labels.items())}
    return MultiTaskBitFit(model, packs)


def batch(n=6, length=10, seed=1):
    torch.manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, length // 2:] = 0  # half the rows padded
    return {"input_ids": torch.randint(5, 120, (n, length)), "attention_mask": mask,
            "token_type_ids": torch.zeros(n, length, dtype=torch.long)}


def per_task_probs(server, inputs, tasks):
    """Each example answered by a plain forward after switching to its task."""
    probs = []
    for i, task in enumerate(tasks):
        server.switch(task)
        with torch.no_grad():
            logits = server.model(**{k: v[i : i + 1] for k, v in inputs.items()}).logits[0]
        probs.append(logits.softmax(-1))
    return probs


def assert_mixed_matches(server, tasks):
    inputs = batch(len(tasks))
    expected = per_task_probs(server, inputs, tasks)
    mixed = server.forward_mixed(**inputs, task_ids=tasks)
    assert [len(m) for m in mixed] == [LABELS[t] for t in tasks]
    diff = max(float((m.softmax(-1) - e).abs().max()) for m, e in zip(mixed, expected))
    assert diff <= 1e-5
    # the tasks really differ: the same example under two tasks gives different answers
    assert not torch.allclose(mixed[0].softmax(-1), per_task_probs(server, inputs, ["sst2"])[0])


TASKS = ["mrpc", "sst2", "nli3", "sst2", "mrpc", "nli3"]


def test_mixed_batch_equals_per_task_runs():
    assert_mixed_matches(make_server(tiny_bert()), TASKS)


def test_mixed_batch_with_the_mean_pooler():
    from lab.heads import set_pooling

    model = set_pooling(tiny_bert(), "mean")
    server = make_server(model)
    assert not any("pooler" in n for n in server._bias_names)
    assert_mixed_matches(server, TASKS)


def test_task_ids_as_indices_and_unknown_names():
    server = make_server(tiny_bert())
    inputs = batch(3)
    by_name = server.forward_mixed(**inputs, task_ids=["mrpc", "nli3", "sst2"])
    by_index = server.forward_mixed(**inputs, task_ids=torch.tensor([0, 2, 1]))
    assert all(torch.equal(a, b) for a, b in zip(by_name, by_index))
    with pytest.raises(KeyError, match="Attached"):
        server.forward_mixed(**inputs, task_ids=["mrpc", "cola", "sst2"])
    with pytest.raises(ValueError, match="one task per example"):
        server.forward_mixed(**inputs, task_ids=["mrpc"])


def test_plain_forward_unaffected_by_mixed_calls():
    model = tiny_bert()
    inputs = batch()
    with torch.no_grad():
        base_logits = model(**inputs).logits
    server = make_server(model)
    server.forward_mixed(**inputs, task_ids=TASKS)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base_logits)  # no task switched in: the base answers
    server.switch("nli3")
    with torch.no_grad():
        before = model(**inputs).logits
    server.forward_mixed(**inputs, task_ids=TASKS)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())  # class forwards again
    assert model.num_labels == 3 and model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_a_mixed_pass_that_fails_leaves_the_model_as_it_was():
    model = tiny_bert()
    inputs = batch()
    server = make_server(model)
    server.switch("nli3")
    with torch.no_grad():
        before = model(**inputs).logits
    broken = {**inputs, "input_ids": inputs["input_ids"] + 10_000}  # ids past the vocabulary: fails mid-pass
    with pytest.raises(IndexError):
        server.forward_mixed(**broken, task_ids=TASKS)
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_switch_matches_load_bias_checkpoint(tmp_path):
    """A real pack file: switch gives what load_bias_checkpoint gives on a fresh copy of the base."""
    base = tiny_bert()
    trained = copy.deepcopy(base)
    bu.apply_bitfit(trained)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    path = packs.save_bias_checkpoint(trained, tmp_path / "mrpc.safetensors", task="mrpc")
    server = MultiTaskBitFit(base, {"mrpc": path})
    reference = tiny_bert()
    packs.load_bias_checkpoint(reference, path)
    inputs = batch()
    server.switch("mrpc")
    with torch.no_grad():
        assert torch.allclose(base(**inputs).logits, reference(**inputs).logits, atol=1e-6)


@pytest.mark.parametrize("change", ["optimizer_step", "load_state_dict", "copy_"])
def test_switch_refused_after_the_frozen_weights_change(change):
    model = tiny_bert()
    server = make_server(model)
    server.switch("mrpc")
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    if change == "optimizer_step":
        weight.requires_grad_(True)
        optimizer = torch.optim.SGD([weight], lr=0.1)
        model(**batch()).logits.sum().backward()
        optimizer.step()
    elif change == "load_state_dict":
        other = {k: v for k, v in tiny_bert(seed=1).state_dict().items() if k.endswith("weight")}
        model.load_state_dict(other, strict=False)
    else:
        with torch.no_grad():
            weight.copy_(tiny_bert(seed=1).bert.encoder.layer[0].attention.self.query.weight)
    with pytest.raises(BaseChanged, match="Reload the base model"):
        server.switch("sst2")
    with pytest.raises(BaseChanged):
        server.forward_mixed(**batch(), task_ids=TASKS)
    with pytest.raises(BaseChanged):
        server.verify_full()


def test_data_edits_escape_the_fast_check_sampled_and_full_checks_catch_them():
    model = tiny_bert(vocab_size=512)  # word embeddings 512 x 16 = 8192 elements: every other one sampled
    server = make_server(model)
    embeddings = model.bert.embeddings.word_embeddings.weight
    embeddings.data.view(-1)[1] += 1.0  # .data bypasses the version counter; position 1 is not sampled
    server.switch("sst2")  # the per-call check cannot see it
    server.check_base(sampled=True)  # nor can the sampled hash: position 1 lies between 0 and 2
    with pytest.raises(BaseChanged, match="full check"):
        server.verify_full()
    embeddings.data.view(-1)[2] += 1.0  # a sampled position
    server.switch("mrpc")
    with pytest.raises(BaseChanged):
        server.check_base(sampled=True)


def test_a_replaced_frozen_tensor_is_refused():
    model = tiny_bert()
    server = make_server(model)
    other = {k: v for k, v in tiny_bert(seed=1).state_dict().items() if k.endswith("query.weight")}
    model.load_state_dict(other, strict=False, assign=True)  # new tensors, fresh version counters
    with pytest.raises(BaseChanged, match="Reload the base model"):
        server.switch("sst2")


def test_pack_of_another_task_is_refused():
    model = tiny_bert()
    with pytest.raises(ValueError, match="pack of task 'sst2', not 'mrpc'"):
        MultiTaskBitFit(model, {"mrpc": synthetic_pack(model, "sst2")})


def test_second_pack_for_a_task_is_refused():
    model = tiny_bert()
    server = make_server(model)
    with pytest.raises(ValueError, match="already has a pack; remove_pack"):
        server.add_pack("mrpc", synthetic_pack(model, "mrpc", seed=9))
    server.remove_pack("mrpc")
    server.add_pack("mrpc", synthetic_pack(model, "mrpc", seed=9))


def test_head_size_and_label_names_are_checked():
    model = tiny_bert()
    server = MultiTaskBitFit(model)
    tensors, meta = synthetic_pack(model, "cola", num_labels=2)
    with pytest.raises(ValueError, match="must have labels"):
        server.add_pack("cola", (tensors, meta), labels=["unacceptable", "acceptable"])
    with pytest.raises(ValueError, match="must have labels"):
        server.add_pack("cola", synthetic_pack(model, "cola", num_labels=3), labels=["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="head has 2 outputs but the pack names 3 labels"):
        server.add_pack("cola", (tensors, {**meta, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    wide = dict(tensors, **{"classifier.weight": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="another base size"):
        server.add_pack("cola", (wide, meta))
    server.add_pack("cola", (tensors, meta), labels=["LABEL_0", "LABEL_1"])


def test_pack_of_another_base_or_head_is_refused():
    model = tiny_bert()
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        MultiTaskBitFit(model, {"mrpc": synthetic_pack(tiny_bert(seed=1), "mrpc")})
    from lab.heads import set_pooling

    with pytest.raises(ValueError, match="lacks tensors"):
        MultiTaskBitFit(model, {"mrpc": synthetic_pack(set_pooling(tiny_bert(), "mean"), "mrpc")})


def test_predict_requests_with_pairs_and_single_sentences(tokenizer):
    server = make_server(tiny_bert())
    requests = [("mrpc", ("the cat", "a cat")), ("sst2", "the cat"), ("nli3", ("cat", "the")), ("sst2", "a b c d")]
    answers = server.predict(requests, tokenizer)
    assert [a["task"] for a in answers] == ["mrpc", "sst2", "nli3", "sst2"]
    assert [len(a["probs"]) for a in answers] == [2, 2, 3, 2]
    assert answers[2]["label"] in {"LABEL_0", "LABEL_1", "LABEL_2"}
    switched = server.predict_switching(requests, tokenizer)  # one request at a time, a plain forward each
    assert [a["label"] for a in switched] == [a["label"] for a in answers]
    assert max(abs(p - q) for a, b in zip(answers, switched) for p, q in zip(a["probs"], b["probs"])) <= 1e-5
    assert server.active == "sst2"


def test_memory_report_counts_one_base_and_small_packs():
    server = make_server(tiny_bert())
    report = server.memory_report()
    assert report["tasks"] == 3
    assert report["served_bytes"] == (report["base_bytes"] + report["bias_reference_bytes"]
                                      + sum(report["pack_bytes"].values()))
    assert report["full_models_bytes"] > report["served_bytes"]
    assert server.memory_line().startswith("one base + 3 packs: ")


def test_training_mode_and_unsupported_models_are_refused():
    model = tiny_bert()
    server = make_server(model)
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        server.forward_mixed(**batch(), task_ids=TASKS)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                  hidden_dim=32))
    with pytest.raises(ValueError, match="BERT-style"):
        MultiTaskBitFit(distil)


def test_benchmark_request_stream_reads_the_three_dev_layouts(mrpc_dir):
    from benchmarks.bench_serving import request_stream

    data = mrpc_dir.parent
    if not all((data / task / "dev.tsv").is_file() for task in ("sst2", "cola")):
        pytest.skip(f"SST-2 or CoLA dev.tsv missing under {data}")
    requests = request_stream(6, data)
    assert [task for task, _ in requests] == ["mrpc", "sst2", "cola"] * 2
    assert all(isinstance(text, tuple) and len(text) == 2 for task, text in requests if task == "mrpc")
    assert requests[1][1] != "sentence" and requests[2][1].endswith(".")  # no header row, CoLA's 4th column


@pytest.mark.slow
def test_benchmark_runs_on_the_offline_model_and_reports_its_figures(mrpc_dir, tmp_path, capsys):
    from benchmarks import bench_serving

    data = mrpc_dir.parent
    if not all((data / task / "dev.tsv").is_file() for task in ("sst2", "cola")):
        pytest.skip(f"SST-2 or CoLA dev.tsv missing under {data}")
    report = bench_serving.main(["--bases", "minilm", "--requests", "6", "--rounds", "1", "--switches", "2",
                                 "--threads", "1", "--json", str(tmp_path / "serving.json")])
    (r,) = report["results"]
    assert r["base"] == "minilm" and r["batch"] == 6 and r["max_prob_difference"] <= 1e-5
    assert r["switch_ms"] > 0 and r["mixed_throughput_ratio"] > 0 and 0 < r["memory_ratio"] < 1
    assert json.loads((tmp_path / "serving.json").read_text())["results"] == report["results"]
    assert "load average at the start" in capsys.readouterr().out
