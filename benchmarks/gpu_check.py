"""GPU check of the trainer and the fused loss: bf16 autocast on CUDA, a mid-sized model.

1. Fused loss: peak GPU memory and step time of the chunked loss vs the plain full-logits path
   (V = 50,304, 2,048 positions, forward KL on top-64, forward + backward).
2. Trainer: `kdstream.distill.train` (the distill command's function) on a Pythia-160M-shaped
   student (12 layers x 768) from a real store of top-64 targets: tokens/s and peak memory.
Saves benchmarks/results/gpu_check.json (`--small`: gpu_check-small.json). Run through
benchmarks/gpu_check.sh on a CUDA machine; `--device cpu --small` runs the same code on a CPU (a
smoke test of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.loader_bench import gpt_neox, write_store
from benchmarks.results import save

B, L, K = 8, 257, 64
V = 50304  # Pythia's vocabulary; --small uses 4096


def peak_mb(device: torch.device) -> float | None:
    """Peak allocated GPU memory (None on CPU: measured there by fused_loss_bench instead)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fused_loss(device: torch.device, hidden: int, chunk: int, steps: int) -> dict:
    from kdstream.distill.objective import Objective

    torch.manual_seed(0)
    net = gpt_neox(2, hidden, hidden // 64, V, L).to(device)
    ids = torch.randint(0, V, (B, L), device=device)
    topk_ids = torch.randint(0, V, (B, L - 1, K), device=device)
    topk_lp = torch.log_softmax(torch.randn(B, L - 1, K, device=device), -1) - 0.1
    out = {}
    for name, c in (("plain", None), ("fused", chunk)):
        obj = Objective(net, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=c)
        net.zero_grad(set_to_none=True)
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
        times = []
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16):
                loss = obj(ids, topk_ids, topk_lp)[0]
            loss.backward()
            sync(device)
            times.append(time.perf_counter() - t)
        rise = None if base is None else round(peak_mb(device) - base, 1)
        out[name] = {"peak_rise_mb": rise, "step_s": round(min(times), 4)}
    return {"hidden": hidden, "chunk": chunk, **{f"{n}_{k}": v for n, r in out.items() for k, v in r.items()},
            "memory_ratio": round(out["fused"]["peak_rise_mb"] / out["plain"]["peak_rise_mb"], 3)
            if device.type == "cuda" else None,
            "time_ratio": round(out["fused"]["step_s"] / out["plain"]["step_s"], 3)}


def trainer(device: torch.device, layers: int, hidden: int, examples: int, seq_len: int, tmp: Path) -> dict:
    from benchmarks.fixtures import tiny_gpt_neox_config
    from kdstream.data import load_corpus
    from kdstream.distill import DistillOptions, train
    from kdstream.text.tokenizers import tokenizer_fingerprint, train_bpe_tokenizer

    tok = train_bpe_tokenizer(load_corpus("demo").texts[:200], 2048, tmp / "tokenizer")
    store = str(tmp / "store.zarr")
    write_store(store, examples, seq_len, K, V, tokenizer=tokenizer_fingerprint(tok))
    student = tmp / "student"
    tiny_gpt_neox_config(V, hidden=hidden, layers=layers).save_pretrained(str(student))
    tok.save_pretrained(str(student))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    summary = train(DistillOptions(model=str(student), out=str(tmp / "run"), logits_store=store, epochs=1,
                                   batch_size=8, lr=1e-4, device=device.type, precision="bf16", loss_chunk=2048))
    return {"layers": layers, "hidden": hidden, "examples": examples, "seq_len": seq_len,
            "tokens_per_s": summary["tokens_per_s"], "final_loss": summary["final_loss"],
            "precision": summary["precision"], "peak_mb": None if device.type != "cuda" else round(peak_mb(device), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke test of this script)")
    a = ap.parse_args()
    device = torch.device(a.device)
    global V
    V = 4096 if a.small else V
    hidden, layers, examples, seq_len = (128, 2, 16, 64) if a.small else (768, 12, 512, 256)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "fused_loss": fused_loss(device, hidden, 512, 2 if a.small else 5),
            "trainer": trainer(device, layers, hidden, examples, seq_len, Path(tmp)),
        }
    save("gpu_check-small" if a.small else "gpu_check", result)


if __name__ == "__main__":
    main()
