"""Rebuild the MiniLM weights packed by build_kit.py (unused vocabulary rows zeroed, byte planes xz-compressed)."""
import hashlib, lzma, shutil, sys
from pathlib import Path
import numpy as np
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
planes = [np.frombuffer(lzma.decompress((src / f"plane{i}.xz").read_bytes()), dtype=np.uint8) for i in range(4)]
body = np.stack(planes, axis=1).reshape(-1).tobytes()
raw = (src / "header.bin").read_bytes() + body
assert hashlib.sha256(raw).hexdigest() == (src / "sha256").read_text().strip(), "weights corrupted in transit"
(dst / "model.safetensors").write_bytes(raw)
for f in src.iterdir():
    if f.suffix in (".json", ".txt"):
        shutil.copy(f, dst / f.name)
print("model rebuilt", len(raw))
