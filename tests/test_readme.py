"""README.md and results/README.md: their generated blocks agree with results/, and the check can fail."""

import json
import re
import shutil

import pytest

from conftest import ROOT
from study import pages as ur

PAGES = ("README.md", "results/README.md")


def copy_project(tmp_path):
    """README.md and results/ (with its README.md) in a folder of their own."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "results", tmp_path / "results")
    return tmp_path


def test_readme_and_results_page_agree_with_committed_results():
    assert ur.main(["--check"]) == 0, "run: python -m study.pages"


def test_the_summary_takes_protocol_3_s_numbers_for_the_methods_it_has_finished(tmp_path):
    import pandas as pd

    root = copy_project(tmp_path)
    v3 = root / "results" / "v3"
    methods = pd.read_csv(v3 / "methods.csv", index_col="method").loc[["frozen", "bitfit", "full"]]
    methods["of"] = methods["seeds"]  # these three complete, LoRA not started
    methods.loc["bitfit", ["acc_mean", "acc_std"]] = [71.25, 1.5]
    methods.to_csv(v3 / "methods.csv")
    readme = ur.render(root)["README.md"]
    assert "`bitfit` 71.2 ± 1.5（5 個 seed）" in readme
    assert "（跨 seed）`lora` " in readme and "（跨 seed）`bitfit`" not in readme  # protocol 2 only for LoRA
    assert "到同一 validation 成績的訓練時間 BitFit / Full FT" in readme and "要訓練多久" not in readme
    methods.loc["lora"] = methods.loc["full"]  # LoRA complete too: no protocol 2 number is left to show
    methods.to_csv(v3 / "methods.csv")
    readme = ur.render(root)["README.md"]
    assert "協定 2，舊規則：最多 6 個 epoch，seed 0 也在回報裡；離線 MiniLM" not in readme and "`lora` " in readme
    assert ur.P2_TAIL not in readme  # nothing below to point at


def test_the_pages_say_the_study_is_complete_only_when_its_plan_has_nothing_left(tmp_path):
    root = copy_project(tmp_path)
    runs = sorted((root / "results" / "v3" / "runs").glob("*.json"))
    pages = ur.render(root)  # the committed study: every planned run has its file
    assert "協定 3**（" in pages["README.md"] and "進行中" not in pages["README.md"].split("協定 3**")[1].split("\n")[0]
    assert "：完成，全部 " in pages["README.md"] and "**完成**：計畫中的 " in pages["results/README.md"]
    runs[-1].unlink()  # one reported run not yet run: the plan has it again
    pages = ur.render(root)
    assert "進行中" in pages["README.md"].split("協定 3**")[1].split("\n")[0]
    assert "**進行中**" in pages["results/README.md"] and "**完成**：計畫中的 " not in pages["results/README.md"]


@pytest.mark.parametrize("path, old, new, shown", [
    ("results/v1/curve.md", "| bitfit | 0.10 | 81.5 |", "| bitfit | 0.10 | 81.6 |", "| bitfit | 0.10 | 81.6 |"),
    ("results/bench_cpu.json", '"bitfit": 1924.72820850071', '"bitfit": 1927.0', "| 0.682（1,927 / 2,825 ms） |"),
])
def test_changing_one_table_cell_makes_the_check_fail(tmp_path, path, old, new, shown):
    root = copy_project(tmp_path)
    assert ur.main(["--check", "--root", str(root)]) == 0
    source = root / path
    text = source.read_text(encoding="utf-8")
    assert text.count(old) == 1
    source.write_text(text.replace(old, new), encoding="utf-8")
    assert ur.main(["--check", "--root", str(root)]) == 1
    ur.main(["--root", str(root)])  # rewriting brings the pages up to date, with the new value in them
    assert ur.main(["--check", "--root", str(root)]) == 0
    assert shown in (root / "results" / "README.md").read_text(encoding="utf-8")


def test_prose_outside_the_markers_survives_a_rewrite(tmp_path):
    root = copy_project(tmp_path)
    page = root / "results" / "README.md"
    marker = ur.end("study-progress")
    page.write_text(page.read_text(encoding="utf-8").replace(marker, marker + "\n\nHand-written note."),
                    encoding="utf-8")
    ur.main(["--root", str(root)])
    assert "Hand-written note." in page.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="no block 'summary'"):
        ur.fill("no markers here", "summary", "body")


def _grid_run(method, lr, seed=0, part="grid"):
    """A finished run file as study.p2_run.run_one writes it, with a made-up two-epoch log."""
    from study import p2_protocol as p2

    mcc = 0.1 + 10 * lr if method != "full" else 0.3 + 1000 * lr
    return {"part": part, "method": method, "lr": lr, "seed": seed, "name": p2._name(part, method, lr, seed),
            "quick": False, "protocol": p2.PROTOCOL, "commit": "0123456789abcdef", "epochs": 2,
            "trainable": 10, "total": 100, "trainable_pct": 10.0, "checkpoint_bytes": 1000, "device": "cpu",
            "threads": 1, "concurrent_runs": 2, "torch": "2.13.0+cpu", "transformers": "5.24.0",
            "wall_seconds": 120.0, "validation_majority": 0.67, "dev_positive_share": 0.684,
            "log": [{"epoch": float(e), "train_seconds": 50.0 * e, "validation_mcc": mcc * e / 2,
                     "validation_accuracy": 0.7 + 0.01 * e, "validation_f1": 0.8, "dev_accuracy": 0.75 + 0.01 * e,
                     "dev_f1": 0.82, "dev_mcc": 0.3} for e in (1, 2)]}


def test_pages_show_the_study_tables_once_they_are_written(tmp_path):
    from lab.registry import HEADLINE, METHODS
    from study import p2_protocol as p2
    from study.p2_report import report

    root = copy_project(tmp_path)
    for name in ("methods.csv", "tta.csv"):  # protocol 3 with no method complete: the summary shows protocol 2's
        (root / "results" / "v3" / name).unlink(missing_ok=True)
    results = root / "results" / "v2"  # protocol 2's folder
    for done in [*(results / "runs").glob("*.json"), *(results / name for name in ("runs.csv", "grid.csv", "grid.md"))]:
        done.unlink(missing_ok=True)  # start from a study with no finished run, whatever is committed
    report(results)
    page = ur.render(root)["results/README.md"]
    assert page.count(ur.NOT_YET) == 4 and "nan" not in page.lower()  # nothing run yet: plain sentences, no NaN
    (results / "runs").mkdir(exist_ok=True)
    for method in HEADLINE:
        for lr in METHODS[method].lrs:
            run = _grid_run(method, lr)
            (results / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
    report(results)  # what python -m study.p2_run --report writes: grid, methods, plot (no ablation or tta runs)
    pages = ur.render(root)
    page, readme = pages["results/README.md"], pages["README.md"]
    assert (results / "grid.md").read_text() in page and (results / "methods.md").read_text() in page
    assert "](v2/methods.png)" in page
    assert page.count(ur.NOT_YET) == 2  # ablations and time-to-accuracy are still to run
    planned = len(p2.plan(p2.read_runs(results)))
    grid = sum(len(METHODS[m].lrs) for m in HEADLINE)
    assert f"已完成 {grid} / {planned} 個 run" in page and "0123456" in page
    assert "`bitfit` 77.0（F1 82.0，1 個 seed）" in readme  # one seed: no std
    assert "nan" not in readme.lower() and "要訓練多久" not in readme
    for method, lr in (("bitfit", 1e-3), ("full", 5e-5)):  # the two time-to-accuracy runs: BitFit 40 s an epoch
        run = _grid_run(method, lr, part="tta")
        for entry in run["log"]:
            entry["train_seconds"] = (40.0 if method == "bitfit" else 50.0) * entry["epoch"]
        (results / "runs" / f"{run['name']}.json").write_text(json.dumps(run))
    report(results)
    pages = ur.render(root)
    page, readme = pages["results/README.md"], pages["README.md"]
    assert page.count(ur.NOT_YET) == 1 and (results / "tta.md").read_text() in page
    assert "為什麼：BitFit 一個 epoch 平均 40 秒，Full FT 50 秒（0.80 倍" in page
    assert "validation 到多數類加 5 分，BitFit / Full FT = 0.80；到 Full FT 的最好成績，BitFit / Full FT = 0.80" in readme


def test_readme_is_short_and_gives_no_exercise_answer_away():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 16 * 1024
    for answer in ("104,450", "104450", "0.0954"):  # 02's exercise 2: BERT-base's BitFit count
        assert answer not in readme
    assert "bash run.sh lab" in readme and "bash run.sh test" in readme
    assert "results/README.md" in readme
    assert not re.search(r"(?<![\w/])lab_(setup|checks)\.py", readme)  # now lab/setup.py and lab/checks.py


def test_grid_edge_names_the_side_of_the_grid_the_chosen_rate_sits_on():
    import pandas as pd

    from study.page_inputs import grid_edge

    def rows(chosen):
        lrs = [3e-4, 1e-3, 3e-3][:len(chosen)]
        return pd.DataFrame({"lr": lrs, "chosen": chosen})

    assert grid_edge(rows([True, False, False])) == "選定的學習率 0.0003 是格點中最小的，更小的學習率沒有試過"
    assert grid_edge(rows([False, False, True])) == "選定的學習率 0.003 是格點中最大的，更大的學習率沒有試過"
    assert grid_edge(rows([False, True, False])) is None   # inside the grid
    assert grid_edge(rows([False, False, False])) is None  # grid not finished: nothing chosen yet
    assert grid_edge(rows([True])) is None                  # one rate is no grid: no side to name


def test_grid_caveats_flag_a_rate_at_the_grid_edge_and_a_best_epoch_that_is_the_last(tmp_path):
    v2 = tmp_path / "v2"  # protocol 2's tables
    v2.mkdir()
    (v2 / "grid.csv").write_text(
        "method,lr,chosen,kept_epoch,validation_mcc,validation_accuracy\n"
        "a,0.001,False,2,0.1,70\na,0.003,False,3,0.2,71\na,0.01,True,6,0.3,72\n"   # top of its grid
        "b,0.001,False,2,0.1,70\nb,0.003,True,3,0.4,75\nb,0.01,False,3,0.2,71\n")  # inside its grid
    (v2 / "methods.csv").write_text("method,max_epochs,kept_epochs\na,6,6 2 6\nb,4,3 2\n")
    text = ur.grid_caveats(tmp_path)
    assert "* `a`：選定的學習率 0.01 是格點中最大的" in text and "3 個 seed 中有 2 個留下的是最後一個 epoch（第 6 個）" in text
    assert "`b`" not in text  # chosen inside the grid, best epochs before the last: nothing to say
    (v2 / "methods.csv").write_text("method,max_epochs,kept_epochs\nb,4,3 2\n")
    (v2 / "grid.csv").write_text("method,lr,chosen,kept_epoch,validation_mcc,validation_accuracy\n"
                                       "b,0.001,False,2,0.1,70\nb,0.003,True,3,0.4,75\nb,0.01,False,3,0.2,71\n")
    assert ur.grid_caveats(tmp_path) is None
    assert ur.grid_caveats(tmp_path / "missing") is None


def test_bench_figures_read_from_text_agree_with_those_computed_from_json(tmp_path):
    """bench_cpu.txt (printed, rounded) and bench_cpu.json (raw) of the same run give the same figures."""
    from study.page_inputs import bench

    shutil.copy(ROOT / "results" / "bench_cpu.txt", tmp_path / "bench_cpu.txt")  # no JSON here: the text is read
    text, raw = bench(tmp_path, "bench_cpu"), bench(ROOT / "results", "bench_cpu")
    assert (text["machine"], text["batch"], text["seq_len"]) == (raw["machine"], raw["batch"], raw["seq_len"])
    assert text["epoch_s"] == pytest.approx(raw["epoch_s"], abs=0.051)
    got, want = text["shapes"]["minilm"], raw["shapes"]["minilm"]
    assert set(got) == set(want)
    for key in ("saves", "shared"):  # the same operators, ms and percent printed without decimals
        assert list(got[key]) == list(want[key])
        assert [v for pair in got[key].values() for v in pair] == pytest.approx(
            [v for pair in want[key].values() for v in pair], abs=0.51)
    for key, value in want.items():
        if isinstance(value, tuple):  # a ratio (3 decimals), then MiB or bytes
            assert got[key][0] == pytest.approx(value[0], abs=6e-4), key
            assert got[key][1:] == pytest.approx(value[1:], rel=2e-3, abs=0.051), key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=6e-4), key
    assert got["step_ms"] == pytest.approx(want["step_ms"], abs=0.051)


def test_the_budget_sentence_names_the_costliest_runs_or_says_the_overrun_is_only_estimated(monkeypatch):
    from study import pages_v3
    from study import run as study_run

    folder = ROOT / "results" / "v3"
    stages = {"mrpc": {"spent": 19.8, "left": 0.0, "budget": 9.0}, "tasks": {"spent": 0.0, "left": 4.6, "budget": 4.0}}
    mrpc_runs = [r for r in study_run.read_runs(folder) if study_run.stage_of(r) == "mrpc"]  # no task run finished
    monkeypatch.setattr(study_run, "estimate", lambda folder, quick=False: ([], stages))
    monkeypatch.setattr(study_run, "read_runs", lambda folder: mrpc_runs)
    said = pages_v3.budget_sentence(folder)
    mrpc, tasks = said.split("；其他任務")
    assert "超出 10.8" in mrpc and "（最久的 " in mrpc and "個 epoch" in mrpc  # finished runs: the costliest named
    assert "超出 0.6" in tasks and "還沒有跑完的 run" in tasks and "估計" in tasks and "最久的" not in tasks
