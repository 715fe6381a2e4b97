"""Rewrite README's study section and its handout-claims block from results/ (nothing in them is typed by hand).

    python benchmarks/update_readme.py            # rewrite README.md
    python benchmarks/update_readme.py --check    # exit 1 if README.md is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
import torch
from transformers import BertConfig, BertForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bitfit_utils as bu  # noqa: E402
import compare_methods as cm  # noqa: E402

# The seed-0 run files predate the device and version fields: this is where they ran.
CPU_MACHINE = "一台 2 核 x86-64 CPU（無 GPU、torch 2.13.0 CPU 版、transformers 5.24.0；2026-11-26）"


def md(results: Path, name: str) -> str:
    path = results / f"{name}.md"
    return path.read_text(encoding="utf-8") if path.exists() else "（尚未執行）\n"


def status_line(results: Path) -> str:
    """How much of the study is done, where each part ran and how long it took."""
    runs = pd.read_csv(results / "runs.csv").to_dict("records")  # compare_methods --report filled in the defaults
    done = {r["name"] for r in runs}
    planned = cm.plan("all", False)
    progress = []
    for part, label in (("main", "方法表"), ("curve", "訓練集大小曲線"), ("groups", "逐組偏置")):
        names = [r["name"] for r in planned if r["part"] == part]
        progress.append(f"{label} {sum(n in done for n in names)}/{len(names)}")
    complete = all(r["name"] in done for r in planned)
    cpu = [r for r in runs if r["device"] == "cpu"]
    gpu = [r for r in runs if r["device"] != "cpu"]
    hours = sum(r["train_s_per_epoch"] * r["epochs"] for r in cpu) / 3600
    line = ("**全部 run 已完成**" if complete else "**研究進行中**") + f"（{'、'.join(progress)} 個 run）。"
    line += f"{len(cpu)} 個 run 在{CPU_MACHINE}上一次跑一個，訓練時間合計 {hours:.1f} 小時"
    if gpu:
        devices = "、".join(sorted({r["device"] for r in gpu}))
        versions = "、".join(sorted({f"torch {r['torch']}、transformers {r['transformers']}" for r in gpu}))
        seeds = "、".join(str(s) for s in sorted({r["seed"] for r in gpu}))
        jobs = "、".join(str(j) for j in sorted({r["concurrent_runs"] for r in gpu}))
        walls = "、".join(f"{device} 上 {n} 個 run 花 {s} 秒" for device, n, s in gpu_walls(results / "gpu_study.txt"))
        line += (f"；其餘 {len(gpu)} 個（seed {seeds}）在 GPU（{devices}；{versions}）上以 "
                 f"`python benchmarks/compare_methods.py --jobs {jobs}` {jobs} 個同時跑"
                 + (f"（{walls}；`results/gpu_study.txt`）" if walls else ""))
    return line


def gpu_walls(log: Path) -> list[tuple[str, str, str]]:
    """(device, runs, seconds) per GPU in results/gpu_study.txt ('## <device>: ...' then 'study: N runs in S s')."""
    found, device = [], None
    for text in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        if text.startswith("## "):
            device = text[3:].split(":")[0]
        elif match := re.fullmatch(r"study: (\d+) runs in (\d+) s", text):
            found.append((device, *match.groups()))
    return found


def study_section(results: Path) -> str:
    """The '### 方法比較研究' section: how the study runs, where it ran, and its tables."""
    complete = "全部 run 已完成" in (status := status_line(results))
    title = "### 方法比較研究" + ("" if complete else "（進行中）")
    curve_img = "\n![訓練集大小曲線](results/curve.png)\n" if (results / "curve.png").exists() else ""
    return f'''{title}

多 seed 與更多方法（LoRA、BitFit+LoRA、隨機參數、LayerNorm gain、講義的兩個配方）的比較：
`python benchmarks/compare_methods.py`。每一個（方法、seed、訓練集比例）各自在新行程中訓練，結束就寫出
`results/runs/<名稱>.json`（已提交，含裝置與套件版本）；再執行時會跳過已完成的部分，所以可以分多次跑完（順序是 seed 0 的所有部分先跑）。
在任何一台有 GPU 的機器上，執行研究的方式是 `python benchmarks/compare_methods.py --jobs N`：同時跑 N 個 run（此時不記錄時間，見下）。
`--report` 只重建 `results/methods.csv`、`methods.md`、`methods.png`（以及 `curve.*`、`groups.*`）。`--quick` 為冒煙測試（CI 中執行）。
README 的這一節與下方「講義說法」清單由 `python benchmarks/update_readme.py` 從 `results/` 重寫，測試會檢查兩者一致。

設定：離線 MiniLM、MRPC 訓練集、batch 32、最長 128、02 的 Trainer 流程（每個 epoch 在 dev 上評估並保留 F1 最好的
epoch）；各方法的學習率（`lr`）與 epoch 數及理由寫在 `benchmarks/compare_methods.py` 的 `METHODS`（所有參數高效方法都是 7 個
epoch、805 步；Frozen 與 Full FT 用 02 的 3 個 epoch）。`s_per_epoch` 含每個 epoch 的 dev 評估與存檔；`peak_rss_mib` 是該 run
自己行程的記憶體峰值——這兩欄只取 CPU 上單獨跑的 run（seed 0），同時跑的 GPU run 時間不能比；`cuda_max_mib` 是 GPU run 各自行程的
CUDA 記憶體峰值；`devices` 欄列出每列的 run 在哪裡跑。同一個 seed 換到 GPU 重跑的差異（`results/device_check.md`）：

{md(results, "device_check")}
`checkpoint_mb` 對 BitFit 類方法是本專案的 bias pack（一律存下**所有**偏置＋分類頭，切換 pack 時才不會留下舊值），
對 LoRA 類是 `save_pretrained` 的 adapter，對 Full FT 與隨機參數是整個模型（隨機遮罩散在每個權重矩陣裡）。
`handout_bitfitlora` 是講義的 `BitFitLoRA` 類別照原樣（LoRA r=4，偏置與分類頭都被凍結）；`adaptive_init` 是先做講義的
「自適應偏置初始化」再做 BitFit。兩者的說明與逐條檢驗在 `02-Train.ipynb` 第 7、8 節。

{status}。acc/F1 為 dev 上的平均 ± 標準差（跨 seed；只有一個 seed 時標準差為「–」）：

{md(results, "methods")}
![各方法 dev F1](results/methods.png)

訓練集大小曲線（論文圖 2；BitFit 與 Full FT，10 %／25 %／50 %／100 % 的訓練集）：

{md(results, "curve")}{curve_img}
逐組偏置（一次只訓練一組偏置＋分類頭，依 dev F1 排序；與 03 的變化量熱圖對照）：

{md(results, "groups")}
'''


def bias_share(config) -> float:
    """Percent of a BERT classifier's parameters that are encoder biases (head excluded)."""
    with torch.device("meta"):
        report = bu.apply_bitfit(BertForSequenceClassification(config))
    return 100 * (report.trainable - 2 * config.hidden_size - 2) / report.total


def claims_block(results: Path) -> str:
    """The handout-claims bullets, with the study's numbers."""
    m = pd.read_csv(results / "methods.csv", index_col="method")
    g = pd.read_csv(results / "groups.csv", index_col="group")
    seeds = int(m.seeds.min())
    share = {"base": bias_share(BertConfig(num_labels=2)),
             "large": bias_share(BertConfig(num_labels=2, hidden_size=1024, num_hidden_layers=24,
                                            num_attention_heads=16, intermediate_size=4096))}

    def d(method: str, col: str = "f1_mean") -> float:
        return m.loc[method, col] - m.loc["bitfit", col]

    text = f"""* **沒有來源的表格**（GLUE 平均 82.3、8 分鐘 vs 45 分鐘、3.2 GB vs 8.5 GB）：本專案不引用，改以同一次研究量到的比值對照
  （方法比較研究，每個方法 {seeds} 個 seed；逐條檢驗在 `02-Train.ipynb` 第 8 節）：每個 epoch 的訓練時間 BitFit / Full FT =
  {m.s_per_epoch['bitfit'] / m.s_per_epoch['full']:.2f}（講義 8/45 = 0.18），整段訓練（7 vs 3 個 epoch）=
  {m.s_per_epoch['bitfit'] * m.epochs['bitfit'] / (m.s_per_epoch['full'] * m.epochs['full']):.2f}；行程記憶體峰值 BitFit / Full FT =
  {m.peak_rss_mib['bitfit'] / m.peak_rss_mib['full']:.2f}（講義 3.2/8.5 = 0.38）。原因見下方「效能」。我們只跑 MRPC，沒有 GLUE 平均可比。
* **「0.08 % 的參數」**：以形狀計算，BERT-base 的偏置佔 {share['base']:.3f} %，BERT-large 佔 {share['large']:.3f} %：0.08 % 是 BERT-large 的數字（02 第 8 節）。
* **「自適應偏置初始化」**把預訓練好的偏置整個換成 N(0, 0.01) 雜訊（與原值相關係數約 0，02 第 7 節）；之後再做 BitFit，
  dev F1 比直接 BitFit 差 {-d('adaptive_init'):.1f} 分、accuracy 差 {-d('adaptive_init', 'acc_mean'):.1f} 分。
* **`BitFitLoRA` 類別**：`get_peft_model` 把偏置再次凍結（PEFT 只有 `LoraConfig(bias="all")` 才保留偏置），又因為沒有
  `task_type`，分類頭也被凍結、adapter 檔裡也沒有它（訓練好的模型無法還原）。可訓練的只有 LoRA 矩陣（36,864 個，
  02 第 7 節逐組列出）；dev F1 比 BitFit 差 {-d('handout_bitfitlora'):.1f} 分，比正確的 BitFit + LoRA（`bias="all"`）差
  {m.f1_mean['bitfit_lora'] - m.f1_mean['handout_bitfitlora']:.1f} 分。
"""
    text += f"""* **「`query` 與 `intermediate` 的偏置最重要、`key` 最不重要」**：一次只訓練一組偏置（{int(g.seeds.min())} 個 seed，03 最後一節）：
  `intermediate` 排第一（F1 {g.f1_mean['intermediate']:.1f}，只訓練分類頭是 {m.f1_mean['frozen']:.1f}）、`key` 停在多數類（{g.f1_mean['key']:.1f}），
  但 `query` 單獨訓練也停在多數類（{g.f1_mean['query']:.1f}）：講義的前半句在這裡不成立。任何一組單獨都遠不及全部偏置（{m.f1_mean['bitfit']:.1f}）。
"""
    return text


def render(readme: str, results: Path) -> str:
    """``readme`` with the study section and the claims block rebuilt from ``results``."""
    start = readme.index("### 方法比較研究")
    end = readme.index("## 效能：BitFit 省了什麼、省不了什麼")
    readme = readme[:start] + study_section(results) + "\n" + readme[end:]
    a, b = readme.index("<!-- claims:start -->"), readme.index("<!-- claims:end -->")
    return readme[:a] + "<!-- claims:start -->\n" + claims_block(results) + readme[b:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether README.md is up to date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = render(text, ROOT / "results")
    if args.check:
        if new != text:
            sys.exit("README.md is out of date with results/: run python benchmarks/update_readme.py")
        print("README.md matches results/")
    elif new != text:
        readme.write_text(new, encoding="utf-8")
        print("README.md rewritten")


if __name__ == "__main__":
    main()
