"""lab.consistency and study.consistency: which bias groups move most, task by task, on tiny random BERTs."""

import json

import pytest
import torch

import bitfit_utils as bu
from lab import packs
from lab.analysis import bias_changes
from lab.consistency import (changes_by_task, compare_tasks, consistency_sentence, group_profile, mean_changes,
                             pack_changes, plot_consistency)
from conftest import tiny_bert


def moved(model, big: tuple[str, ...], seed: int = 0, big_scale: float = 0.5, small_scale: float = 0.01):
    """A copy of ``model``'s biases where the groups in ``big`` moved far and every other bias a little."""
    generator = torch.Generator().manual_seed(seed)
    groups = bu.parameter_groups(model)
    out = {}
    for name, p in model.named_parameters():
        if groups[name] in bu.BIAS_GROUPS:
            scale = big_scale if groups[name] in big else small_scale
            out[name] = p.detach() + scale * torch.randn(p.shape, generator=generator)
    return out


def profiles(model, moves: dict[str, tuple[str, ...]]):
    groups = bu.parameter_groups(model)
    base = dict(model.named_parameters())
    return {task: group_profile(pack_changes(base, moved(model, big, seed=i), groups))
            for i, (task, big) in enumerate(moves.items())}


def test_pack_changes_is_bias_changes_of_a_model_holding_the_pack():
    model = tiny_bert()
    tensors = moved(model, ("query",))
    tuned = tiny_bert()
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name in tensors:
                p.copy_(tensors[name])
    expected = bias_changes(model, tuned)
    got = pack_changes(dict(model.named_parameters()), tensors, bu.parameter_groups(model))
    assert got.equals(expected)


def test_yes_when_query_and_intermediate_move_most_on_every_task():
    model = tiny_bert()
    result = compare_tasks(profiles(model, {"mrpc": ("query", "intermediate"), "sst2": ("intermediate", "query"),
                                            "cola": ("query", "intermediate")}))
    assert result.answer and result.same_top and all(result.matches_claim.values())
    assert set(result.top["sst2"]) == {"query", "intermediate"}
    sentence = consistency_sentence(result, {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA"})
    assert sentence.startswith("是：每個任務（MRPC、SST-2、CoLA）") and "query 與 intermediate" in sentence


def test_no_when_one_task_moves_other_groups_most():
    model = tiny_bert()
    result = compare_tasks(profiles(model, {"mrpc": ("query", "intermediate"), "sst2": ("value", "output")}))
    assert not result.answer and not result.same_top
    assert result.matches_claim == {"mrpc": True, "sst2": False}
    sentence = consistency_sentence(result)
    assert sentence.startswith("否：各任務變化最大的 2 組不同")
    assert "sst2：" in sentence and "在 2 個任務中只有 1 個排在前 2" in sentence


def test_no_when_every_task_agrees_on_groups_other_than_the_claimed_ones():
    model = tiny_bert()
    result = compare_tasks(profiles(model, {"a": ("value", "output"), "b": ("output", "value")}))
    assert result.same_top and not result.answer
    assert "但不是講義（3.2 節）與 Ben Zaken 等人（2022）說變化最大的 query 與 intermediate" in consistency_sentence(result)


def test_group_profile_leaves_out_embeddings_and_pooler_rows():
    model = tiny_bert()
    tensors = moved(model, ("pooler", "embeddings_layernorm"), big_scale=5.0)
    changes = pack_changes(dict(model.named_parameters()), tensors, bu.parameter_groups(model))
    assert {"pooler", "embeddings"} <= set(changes.index)
    profile = group_profile(changes)
    assert "pooler" not in profile.index and "embeddings_layernorm" not in profile.index
    assert list(profile) == sorted(profile, reverse=True)


def test_mean_changes_averages_cell_by_cell_and_compare_needs_common_groups():
    model = tiny_bert()
    groups, base = bu.parameter_groups(model), dict(model.named_parameters())
    a, b = (pack_changes(base, moved(model, ("query",), seed=s), groups) for s in (1, 2))
    assert mean_changes([a, b]).equals(((a + b) / 2).rename_axis("layer"))
    with pytest.raises(ValueError, match="at least one pack"):
        mean_changes([])
    with pytest.raises(ValueError, match="need at least 3"):
        compare_tasks({"a": group_profile(a)[:2], "b": group_profile(b)[:2]}, k=3)


def test_changes_by_task_reads_packs_and_refuses_another_base(tmp_path):
    model = tiny_bert()
    paths = []
    for i, (task, big) in enumerate([("mrpc", ("query",)), ("sst2", ("value",)), ("mrpc", ("query",))]):
        trained = tiny_bert()
        bu.apply_bitfit(trained)
        with torch.no_grad():
            for name, tensor in moved(model, big, seed=i).items():
                dict(trained.named_parameters())[name].copy_(tensor)
        paths.append(packs.save_bias_checkpoint(trained, tmp_path / f"{task}-{i}.safetensors", task=task))
    tables = changes_by_task(model, paths)
    assert list(tables) == ["mrpc", "sst2"]
    assert group_profile(tables["mrpc"]).index[0] == "query" and group_profile(tables["sst2"]).index[0] == "value"
    with pytest.raises(ValueError, match="not trained on this base"):
        changes_by_task(tiny_bert(seed=1), paths)


def test_show_consistency_plots_one_panel_per_task_and_prints_the_computed_sentence(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from lab.consistency import show_consistency

    model = tiny_bert()
    paths = []
    for i, task in enumerate(("mrpc", "sst2")):
        trained = tiny_bert()
        bu.apply_bitfit(trained)
        with torch.no_grad():
            for name, tensor in moved(model, ("query", "intermediate"), seed=i).items():
                dict(trained.named_parameters())[name].copy_(tensor)
        paths.append(packs.save_bias_checkpoint(trained, tmp_path / f"{task}.safetensors", task=task))
    plt.close("all")
    result = show_consistency(model, paths)
    assert result.answer and list(result.tasks) == ["mrpc", "sst2"]
    assert len(plt.gcf().axes) >= 2  # a panel per task
    assert capsys.readouterr().out.strip() == consistency_sentence(result, {"mrpc": "MRPC", "sst2": "SST-2"})


def test_plot_has_one_panel_per_task():
    model = tiny_bert()
    groups, base = bu.parameter_groups(model), dict(model.named_parameters())
    tables = {t: pack_changes(base, moved(model, ("query",), seed=i), groups) for i, t in enumerate("abc")}
    fig = plot_consistency(tables, top={"a": ("query", "value")})
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3 and "most: query, value" in panels[0].get_title()


def test_script_writes_figure_json_and_markdown(tmp_path, capsys):
    from study.consistency import main

    model = tiny_bert()
    folder = tmp_path / "packs"
    for i, (name, task, big) in enumerate([("seeds-bitfit-cls-lr0.001-s1", "mrpc", ("query", "intermediate")),
                                            ("grid-bitfit-cls-lr0.001-s0", "mrpc", ("value", "key")),  # seed 0: out
                                            ("sst2-task-bitfit-cls-lr0.001-s1", "sst2", ("intermediate", "query")),
                                            ("cola-task-bitfit-cls-lr0.001-s1", "cola", ("query", "intermediate")),
                                            ("cola-task-full-cls-lr0.001-s1", "cola", ("value", "key"))]):  # not bitfit
        trained = tiny_bert()
        bu.apply_bitfit(trained)
        with torch.no_grad():
            for n, tensor in moved(model, big, seed=i).items():
                dict(trained.named_parameters())[n].copy_(tensor)
        packs.save_bias_checkpoint(trained, folder / f"{name}.safetensors", task=task)
    out = tmp_path / "out"
    assert main(["--packs", str(folder), "--out", str(out)], base_model=model) == 0
    facts = json.loads((out / "consistency.json").read_text())
    assert facts["answer"] == "yes" and facts["tasks"] == ["mrpc", "sst2", "cola"]
    assert facts["packs"] == {"mrpc": ["seeds-bitfit-cls-lr0.001-s1.safetensors"],
                              "sst2": ["sst2-task-bitfit-cls-lr0.001-s1.safetensors"],
                              "cola": ["cola-task-bitfit-cls-lr0.001-s1.safetensors"]}
    assert (out / "consistency.png").stat().st_size > 1000
    md = (out / "consistency.md").read_text()
    assert "的圖 1" in md and facts["sentence"] in md and "是：每個任務（MRPC、SST-2、CoLA）" in capsys.readouterr().out
