"""What the whole-file teacher fingerprint costs: `model_fingerprint` of a model directory whose
weight file has random bytes, cold (nothing cached: every byte hashed) and warm (the per-user cache
hit by path, size and times), in MB/s and seconds. A 24 GB checkpoint costs size ÷ the cold rate
once; later runs pay the warm time.

    python -m benchmarks.fingerprint_bench [--mib 512]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import save
from kdstream.model_files import model_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the weight file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"vocab_size": 8}))
        rng = np.random.default_rng(0)
        with (model / "model.safetensors").open("wb") as f:
            for _ in range(args.mib):
                f.write(rng.bytes(1 << 20))
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # an empty cache: the first call hashes
        start = time.perf_counter()
        cold = model_fingerprint(model)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = model_fingerprint(model)
        warm_s = time.perf_counter() - start
    assert cold["weights_fingerprint"] == warm["weights_fingerprint"]
    size_mb = args.mib * (1 << 20) / 1e6
    save("fingerprint_bench", {"weight_file_mib": args.mib, "cold_seconds": round(cold_s, 3),
                               "cold_mb_per_s": round(size_mb / cold_s, 1), "warm_seconds": round(warm_s, 4),
                               "seconds_per_24_gb_cold": round(24e3 / (size_mb / cold_s), 1)})


if __name__ == "__main__":
    main()
