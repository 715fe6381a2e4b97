"""The performance and claims blocks of results/README.md, from bench_bitfit.py's outputs and the study's tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

from study.page_inputs import P2_RULE_ZH, V1_RULE, bench, csv, machine


# ----- results/README.md: performance ----------------------------------------------------


def _r(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


#: The page's names of the benchmarks' model shapes.
SHAPE_NAMES = {"minilm": "MiniLM", "bert-base": "BERT-base 形狀", "bert-base-shape": "BERT-base 形狀"}


def _json(results: Path, stem: str) -> dict | None:
    path = results / f"{stem}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def pack_switch_line(results: Path) -> str:
    """Loading a pack from disk onto a loaded model, as measured by ``bench_bitfit.py --pack-only``."""
    data = _json(results, "bench_pack_switch")
    if data is None:
        return "（從檔案載入 pack 的時間：執行 `python benchmarks/bench_bitfit.py --pack-only` 產生 `results/bench_pack_switch.*`。）"
    parts = [f"{SHAPE_NAMES.get(k, k)} 每次 {v['pack']['switch_ms']:.0f} ms（其中抽樣指紋 {v['pack']['hash_ms']:.0f} ms；"
             f"雜湊全部 {v['pack']['frozen_bytes'] / 1e6:.0f} MB 凍結權重要 {v['pack']['full_hash_ms']:.0f} ms）"
             for k, v in data["shapes"].items()]
    return ("**從檔案載入 bias pack 到已載入的模型**：" + "、".join(parts) + f"（{machine(data['machine'])}，torch {data['torch']}；"
            f"量測開始時 load average {data['load_average_1min']:.1f}，有其他工作共用 CPU 時每個時間都偏長；"
            "`python benchmarks/bench_bitfit.py --pack-only`，原始輸出在 `results/bench_pack_switch.txt`）。"
            "每次載入都對凍結權重做抽樣指紋（每個張量 4,096 個等距元素），換了基底、訓練過或 `load_state_dict` 過的模型都會被拒絕；"
            "只改了抽樣位置之間幾個元素的，抽樣看不到，`verify=\"full\"` 雜湊每個元素。")


def serving_line(results: Path) -> str:
    """One base serving three tasks, as measured by ``bench_serving.py`` (switching in memory, mixed batch)."""
    data = _json(results, "bench_serving")
    if data is None:
        return "（一個基底服務多個任務：執行 `python benchmarks/bench_serving.py --json results/bench_serving.json`。）"
    parts = [f"{SHAPE_NAMES.get(r['base'], r['base'])}：切換 {r['switch_ms']:.2f} ms（一次 batch {r['batch']} 前向的 "
             f"{r['switch_over_forward']:.4f} 倍），混合批次的吞吐是單一任務的 {r['mixed_throughput_ratio']:.2f} 倍，"
             f"與逐任務的機率最多差 {r['max_prob_difference']:.0e}，記憶體 {r['served_mb']:.0f} MB 對 "
             f"{r['full_models_mb']:.0f} MB（{r['memory_ratio']:.3f} 倍）" for r in data["results"]]
    load = data.get("load_average_1min")
    where = (f"{machine(data['machine'])}，torch {data['torch']}，load average {load[0]:.1f} → {load[1]:.1f}"
             if "machine" in data else "機器沒有記錄")
    return ("**一個基底同時服務三個任務**（`lab/serving.py` 的 `MultiTaskBitFit`；三個合成 pack，"
            "`python benchmarks/bench_serving.py`，原始輸出在 `results/bench_serving.txt`，" + where + "）："
            + "；".join(parts) + "。切換不讀檔也不雜湊：只把偏置寫回、換分類頭，並檢查每個凍結張量的身分與 PyTorch 的"
            "版本計數（訓練、`load_state_dict`、`copy_` 都會改變它而被拒絕；透過 `.data` 的修改看不到，"
            "`check_base(sampled=True)` 與 `verify_full()` 才查得到）。")


def perf_block(results: Path) -> str:
    cpu, bert, gpu = (bench(results, f) for f in ("bench_cpu", "bench_cpu_bert_base", "bench_gpu_h200"))
    if cpu is None:
        return "（`results/bench_cpu.txt` 不在：執行 `python benchmarks/bench_bitfit.py --epoch` 產生。）"
    shapes = {"minilm": cpu["shapes"]["minilm"], **({"bert-base": bert["shapes"]["bert-base"]} if bert else {})}
    names = {"minilm": "離線 MiniLM（真實權重）", "bert-base": "BERT-base 形狀（隨機權重）"}

    def step(s):
        return f"{s['step']:.3f}（{s['step_ms']['bitfit']:,.0f} / {s['step_ms']['full']:,.0f} ms）"

    def above(s):
        ratio, b, f = s["memory"]
        return f"{ratio:.3f}（{b:,.0f} / {f:,.0f} MiB）"

    def pack(s):
        pct, b, f = s["pack_share"]
        return f"{pct:.3f} %（{b:,.0f} / {f:,.0f} B）"

    rows = [
        ("訓練一步（forward＋backward＋AdamW）BitFit / Full FT", step),
        ("同上，模型不用 dropout", lambda s: _r(s["step_no_dropout"])),
        ("只訓練 query＋intermediate 偏置 / Full FT", lambda s: _r(s["step_qi"])),
        ("「純 PyTorch 依名稱選偏置」/ 本專案 `apply_bitfit`", lambda s: _r(s["plain"])),
        ("訓練記憶體（高於載入後的 RSS）BitFit / Full FT", above),
        ("同上，依張量計算（保存的激活值＋梯度＋優化器狀態）", lambda s: _r(s["kept"][0])),
        ("同上（RSS），模型不用 dropout", lambda s: _r(s["memory_no_dropout"])),
        ("推論延遲 BitFit / 原模型", lambda s: _r(s["inference"])),
        ("pack / 完整 checkpoint", pack),
    ]
    table = ["| 項目（比值 = BitFit / 對照） | " + " | ".join(names[k] for k in shapes) + " |",
             "|---|" + "---|" * len(shapes)]
    table += [f"| {label} | " + " | ".join(f(s) for s in shapes.values()) + " |" for label, f in rows]
    epoch = cpu.get("epoch_s")
    if epoch:
        table.insert(6, f"| 一個真實 Trainer epoch（02 的設定，整個 MRPC 訓練集）BitFit / Full FT | "
                        f"{epoch['bitfit'] / epoch['full_ft']:.3f}（{epoch['bitfit']:.1f} / {epoch['full_ft']:.1f} s） |"
                     + " — |" * (len(shapes) - 1))
        table.insert(7, f"| 同上，本專案 BitFit / 原始 BitFit 配方（全部補到 128、batch 8、不分組） | "
                        f"{epoch['bitfit'] / epoch['bitfit_original_recipe']:.3f}（{epoch['bitfit']:.1f} / "
                        f"{epoch['bitfit_original_recipe']:.1f} s） |" + " — |" * (len(shapes) - 1))
    files = "`results/bench_cpu.txt`（＋`bench_cpu.json`）" + ("、`results/bench_cpu_bert_base.txt`" if bert else "")
    out = [f"量測環境：{machine(cpu['machine'])}（torch {cpu['torch']}），fp32、batch {cpu['batch']}、長度 {cpu['seq_len']}。"
           f"指令：`python benchmarks/bench_bitfit.py --shapes minilm --epoch` 與 `--shapes bert-base`；原始輸出在 {files}。"
           "各方法在同一次執行中交錯量測；記憶體是每個方法各開一個新行程量測。每個數字都只量了一次：只差在小數第二位時請當成雜訊。",
           "", *table, "", pack_switch_line(results), "", serving_line(results), ""]

    m = shapes["minilm"]
    saves, shared = m["saves"], m["shared"]
    ratios = [s["step"] for s in shapes.values()]
    ratios += [s["step_no_dropout"] for s in shapes.values()]
    bert_mm = f"；BERT-base 佔 {bert['shapes']['bert-base']['saves']['aten::mm'][1]:.0f} %" if bert else ""
    kept = m["kept"]  # ratio, full act, grad, opt, bitfit act, grad, opt
    nodrop = {k: s["memory_no_dropout"] for k, s in shapes.items()}
    out += [
        f"**時間去了哪裡**（`bench_bitfit.py` 內建的 profile，MiniLM，每步平均）：BitFit 省下的幾乎全是 `aten::mm`"
        f"——反向傳播中計算權重梯度 $\\partial L/\\partial W$ 的矩陣乘法（全參數微調每步 {saves['aten::mm'][0]:.0f} ms，"
        f"佔 {saves['aten::mm'][1]:.0f} %{bert_mm}）。兩者都要付的是：前向的 `addmm`（{shared['aten::addmm'][1]:.0f} %）、"
        f"反向中**輸入梯度**的 `mm`（{shared['aten::mm'][1]:.0f} %），以及 dropout 產生遮罩的 `bernoulli_`"
        f"（{shared['aten::bernoulli_'][1]:.0f} %）。所以在 CPU 上，BitFit 一步最多只能省掉「權重梯度」那一份矩陣乘法；"
        f"再加上 dropout、softmax、GELU、LayerNorm 等兩者共同的成本，上表的步驟比值落在 "
        f"{min(ratios):.2f}–{max(ratios):.2f}。我們檢查過可能由本專案程式造成的浪費，都沒有："
        f"優化器只拿到 `requires_grad` 的參數（BitFit 的 AdamW 狀態 {kept[6]:.1f} MiB）；凍結的權重沒有 `.grad`"
        f"（梯度 {kept[5]:.1f} MiB）；只用來算權重梯度的線性層輸入沒有被保存（BitFit 保存的激活值少了 "
        f"{kept[1] - kept[4]:.0f} MiB，正是這些張量）；純 PyTorch 依名稱選偏置的寫法也一樣快"
        f"（比值 {m['plain']:.3f}）。",
        "",
        f"**記憶體去了哪裡**（MiniLM）：全參數微調多出的是權重梯度（{kept[2]:.1f} MiB）、AdamW 的兩份狀態"
        f"（{kept[3]:.0f} MiB）與線性層輸入（{kept[1] - kept[4]:.0f} MiB）；BitFit 三者都省了。但 batch {cpu['batch']} × "
        f"{cpu['seq_len']} 時，兩者共同需要的激活值更大：注意力機率與其 dropout 遮罩（每層 3 個 batch × 頭數 × "
        f"{cpu['seq_len']} × {cpu['seq_len']} 的 float 張量：機率、遮罩、遮罩後的機率）、GELU 的輸入、LayerNorm 的輸入，"
        f"合計 {kept[4]:.0f} MiB。注意力有 dropout 時，PyTorch 在 CPU 上的 `scaled_dot_product_attention` 只能走"
        "「數學」版本、保存整個機率矩陣；沒有 dropout 時改走融合 kernel（只保存 Q、K、V、輸出與每列的 logsumexp），"
        "記憶體比值降到 " + "、".join(f"{v:.3f}（{names[k].split('（')[0]}）" for k, v in nodrop.items()) + "。"
        "換句話說：**模型越大、batch 與序列越短，BitFit 省下的記憶體比例越高**；激活值佔主導時，省下的比例有限。",
    ]
    if gpu:
        g = gpu["shapes"]
        gshapes = [k for k in ("minilm", "bert-base") if k in g]
        grows = [
            ("訓練一步 BitFit / Full FT（fp32）", lambda s: f"{s['step']:.3f}"
                                                          f"（{s['step_ms']['bitfit']:.1f} / {s['step_ms']['full']:.1f} ms）"),
            ("同上，bf16 autocast", lambda s: _r(s["bf16"])),
            ("CUDA 記憶體峰值（`max_memory_allocated`）BitFit / Full FT",
             lambda s: "{:.3f}（{:,.0f} / {:,.0f} MiB）".format(*s["gpu_peak"])),
            ("推論延遲 BitFit / 原模型", lambda s: _r(s["inference"])),
        ]
        gratios = [g[k]["step"] for k in gshapes]
        gratios += [g[k]["bf16"] for k in gshapes]
        out += ["", f"**GPU 上**（{machine(gpu['machine'])}，torch {gpu['torch']}，fp32；同一個腳本 "
                "`python benchmarks/bench_bitfit.py --shapes minilm bert-base`，只跑了一次；原始輸出在 "
                "`results/bench_gpu_h200.txt`＋`.json`）：", "",
                "| 項目（比值 = BitFit / 對照） | " + " | ".join(names[k].split("（")[0] for k in gshapes) + " |",
                "|---|" + "---|" * len(gshapes),
                *(f"| {label} | " + " | ".join(f(g[k]) for k in gshapes) + " |" for label, f in grows), "",
                f"GPU 上的步驟比值落在 {min(gratios):.2f}–{max(gratios):.2f}：BitFit 省下的仍只有權重梯度的矩陣乘法與優化器更新，"
                "前向與輸入梯度照付。MiniLM 一步只要十幾毫秒，這麼小的工作量在 GPU 上多半受固定開銷（kernel 啟動等）限制，"
                "所以比值更接近 1（推測，沒有另外量）。"]
    return "\n".join(out)


# ----- results/README.md: the handout's claims ----------------------------------------------


def bias_share(config) -> float:
    """Percent of a BERT classifier's parameters that are encoder biases (head excluded)."""
    import torch
    from transformers import BertForSequenceClassification

    import bitfit_utils as bu

    with torch.device("meta"):
        report = bu.apply_bitfit(BertForSequenceClassification(config))
    return 100 * (report.trainable - 2 * config.hidden_size - 2) / report.total


def _ablation(results: Path):
    """(table, label): protocol 2's methods + ablations when both hold BitFit and the ablation rows, else v1's."""
    import pandas as pd

    new = [t for t in (csv(results / "v2" / "methods.csv", "method"), csv(results / "v2" / "ablations.csv", "method")) if t is not None]
    if new:
        table = pd.concat(new)
        if {"bitfit", "lora", "adaptive_init", "handout_bitfitlora", "bitfit_lora"} <= set(table.index):
            return table, (f"協定 2，{P2_RULE_ZH}；選定設定下每個方法 " + "／".join(map(str, sorted(set(table.seeds))))
                           + " 個 seed 的 dev 平均")
    old = csv(results / "v1" / "methods.csv", "method")
    if old is None:
        return None, ""
    return old, f"{V1_RULE}；{int(old.seeds.min())} 個 seed 的 dev 平均"


def v3_tta_ratio(folder: Path) -> str:
    """Protocol 3's time to Full FT's median best, BitFit / Full FT, once both have all their seeds; else ``""``."""
    from study.pages_v3 import tta_summary

    ratios = tta_summary(folder)
    if ratios is None:
        return ""
    r = ratios["full_ft_median_best"]
    return (f"整段訓練要到 Full FT 在 validation 上最好成績的中位數，BitFit / Full FT 的時間 = {r['median_ratio']:.2f}"
            f"（協定 3，每個 BitFit seed 對 Full FT 的中位數 seed：{r['min_ratio']:.2f}–{r['max_ratio']:.2f}）。")


def claims_block(results: Path) -> str:
    from transformers import BertConfig

    out = []
    cpu = bench(results, "bench_cpu")
    if cpu:
        m, epoch = cpu["shapes"]["minilm"], cpu.get("epoch_s", {})
        ratio = m["memory"][0]
        text = ("* **沒有來源的表格**（GLUE 平均 82.3、8 分鐘 vs 45 分鐘、3.2 GB vs 8.5 GB）：本專案不引用，"
                f"改以自己量到的比值對照（離線 MiniLM，{machine(cpu['machine'])}，`results/bench_cpu.txt`）：")
        if epoch:
            text += (f"一個 Trainer epoch 的時間 BitFit / Full FT = {epoch['bitfit'] / epoch['full_ft']:.2f}"
                     f"（講義 8/45 = {8 / 45:.2f}）；")
        text += f"訓練記憶體 BitFit / Full FT = {ratio:.2f}（講義 3.2/8.5 = {3.2 / 8.5:.2f}）。"
        tta = csv(results / "v2" / "tta.csv", "target")
        v3 = v3_tta_ratio(results / "v3")
        if v3:
            text += v3
        elif tta is not None and not math.isnan(tta.ratio.get("full_ft_best", math.nan)):
            text += (f"整段訓練要到 Full FT 在 validation 上的最好成績，BitFit / Full FT 的時間 = "
                     f"{tta.ratio['full_ft_best']:.2f}（協定 2，{P2_RULE_ZH}；只有 seed 0；協定 3 每個 seed 的數字在第 0 節）。")
        out.append(text + "原因見上方「效能」。我們只跑 MRPC，沒有 GLUE 平均可比。")
    share = {"base": bias_share(BertConfig(num_labels=2)),
             "large": bias_share(BertConfig(num_labels=2, hidden_size=1024, num_hidden_layers=24,
                                            num_attention_heads=16, intermediate_size=4096))}
    out.append(f"* **「0.08 % 的參數」**：以形狀計算，BERT-base 的偏置佔 {share['base']:.3f} %，BERT-large 佔 "
               f"{share['large']:.3f} %：0.08 % 是 BERT-large 的數字。")
    table, label = _ablation(results)
    if table is not None:
        def d(method: str, col: str) -> float:
            return table.loc["bitfit", col] - table.loc[method, col]

        out.append("* **「自適應偏置初始化」**把預訓練好的偏置整個換成 N(0, 0.01) 雜訊（與原值幾乎無關，02 印出相關係數）；"
                   f"之後再做 BitFit，dev F1 比直接 BitFit 低 {d('adaptive_init', 'f1_mean'):.1f} 分、accuracy 低 "
                   f"{d('adaptive_init', 'acc_mean'):.1f} 分（{label}）。")
        out.append("* **`BitFitLoRA` 類別**：`get_peft_model` 把偏置再次凍結（PEFT 只有 `LoraConfig(bias=\"all\")` 才保留偏置），"
                   "又因為沒有 `task_type`，分類頭也被凍結、adapter 檔裡也沒有它（訓練好的模型無法還原）。可訓練的只有 LoRA 矩陣"
                   f"（{int(table.loc['handout_bitfitlora', 'trainable']):,} 個，02 逐組列出）；dev F1 比 BitFit 低 "
                   f"{d('handout_bitfitlora', 'f1_mean'):.1f} 分，比正確的 BitFit + LoRA（`bias=\"all\"`）低 "
                   f"{table.loc['bitfit_lora', 'f1_mean'] - table.loc['handout_bitfitlora', 'f1_mean']:.1f} 分（{label}）。")
    groups, old = csv(results / "v1" / "groups.csv", "group"), csv(results / "v1" / "methods.csv", "method")
    if groups is not None and old is not None:
        g = groups.f1_mean
        out.append(f"* **「`query` 與 `intermediate` 的偏置最重要、`key` 最不重要」**：一次只訓練一組偏置（上方的 v1 表；"
                   f"{V1_RULE}；{int(groups.seeds.min())} 個 seed）：`{g.idxmax()}` 排第一（F1 {g.max():.1f}，"
                   f"同一規則下只訓練分類頭是 {old.f1_mean['frozen']:.1f}）、`key` 是 {g['key']:.1f}，`query` 單獨訓練也只有 "
                   f"{g['query']:.1f}：講義的前半句在這裡不成立。任何一組單獨都遠不及全部偏置（{old.f1_mean['bitfit']:.1f}）。")
    return "\n".join(out)
