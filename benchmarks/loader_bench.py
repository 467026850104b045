"""Does the store loader keep up with training? Tokens/s of the loader alone vs a KD training step.

Writes a real store (kdstream's writer: zstd + crc32c chunks) of teacher-shaped top-k rows:
the top-k ids and logprobs come from a random GPT-NeoX teacher's softmax over random tokens, so
they compress like model output rather than like noise. Then, in one run:
  - loader: one epoch of `stream_batches` (seeded block shuffle, decode, torch tensors), with the
    in-process reader (background thread) and with DataLoader worker processes;
  - trainer: median seconds of a KD step (fused loss, AdamW) of the benchmark student (the demo's
    GPT-NeoX, 3 layers x 192, as in kd_step_bench.py) on a batch of the same shape.
Saves tokens/s of each and loader ÷ trainer (target ≥ 20) to benchmarks/results/loader_bench.json.

    python -m benchmarks.loader_bench [--examples 512 --seq-len 128 --top-k 16 --vocab 4096]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

from benchmarks.fixtures import tiny_gpt_neox
from benchmarks.results import save
from kdstream.distill.loader import EpochPlan, OpenStore, epoch_order, stream_batches
from kdstream.distill.objective import Objective
from kdstream.storage import StoreWriter

KEYS = ("input_ids", "topk_ids", "topk_logprobs")


def gpt_neox(layers: int, hidden: int, heads: int, vocab: int, seq_len: int) -> GPTNeoXForCausalLM:
    return tiny_gpt_neox(vocab, seed=None, hidden=hidden, layers=layers, heads=heads, positions=2 * seq_len)


def write_store(url: str, n: int, L: int, k: int, V: int, tokenizer: dict | None = None) -> None:
    torch.manual_seed(0)
    teacher = gpt_neox(2, 128, 2, V, L).eval()
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(8.0)  # peaky like a trained model
    writer = StoreWriter(url, num_examples=n, seq_len=L, k=k, vocab_size=V,
                         attrs={"targets": "topk", "tokenizer": tokenizer or {"sha256": "bench", "vocab_size": V}})
    for b in range(0, n, 32):
        ids = torch.randint(0, V, (min(32, n - b), L))
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)  # (B, L-1, V)
        top = logp.topk(k, -1)
        true = ids[:, 1:]
        target_logprob = logp.gather(-1, true[..., None])[..., 0]
        target_rank = (logp > target_logprob[..., None]).sum(-1)
        writer.append({"input_ids": ids.numpy(), "example_id": np.arange(b, b + len(ids)),
                       "doc_index": np.arange(b, b + len(ids)), "topk_ids": top.indices.numpy(),
                       "topk_logprobs": top.values.numpy(), "target_logprob": target_logprob.numpy(),
                       "target_rank": target_rank.numpy()})
    writer.finalize({})


def loader_tokens_per_s(url: str, n: int, L: int, batch: int, workers: int) -> float:
    plan = EpochPlan(epoch_order(n, 64, 0, 0), batch, 64, KEYS)
    start = time.perf_counter()
    rows = sum(b["input_ids"].shape[0] for b, _ in stream_batches(OpenStore(url), plan, workers=workers))
    assert rows == n
    return rows * L / (time.perf_counter() - start)


def trainer_tokens_per_s(url: str, L: int, k: int, V: int, batch: int, steps: int) -> float:
    from kdstream.storage import open_store

    torch.manual_seed(0)
    student = gpt_neox(3, 192, 3, V, L)
    obj = Objective(student, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=4096)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    rows = open_store(url).read(0, batch, KEYS)
    b = {key: torch.from_numpy(rows[key]) for key in KEYS}
    times = []
    for i in range(steps + 1):  # the first is warm-up
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        obj(**b)[0].backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return batch * L / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "bench.zarr")
        write_store(url, a.examples, a.seq_len, a.top_k, a.vocab)
        trainer = trainer_tokens_per_s(url, a.seq_len, a.top_k, a.vocab, a.batch_size, a.steps)
        thread = loader_tokens_per_s(url, a.examples, a.seq_len, a.batch_size, workers=0)
        procs = loader_tokens_per_s(url, a.examples, a.seq_len, a.batch_size, workers=2)
    save("loader_bench", {
        "examples": a.examples, "seq_len": a.seq_len, "top_k": a.top_k, "vocab": a.vocab, "batch_size": a.batch_size,
        "student": "gpt-neox 3x192", "threads": torch.get_num_threads(),
        "trainer_tokens_per_s": round(trainer, 1),
        "loader_tokens_per_s": round(thread, 1), "loader_2_workers_tokens_per_s": round(procs, 1),
        "loader_over_trainer": round(thread / trainer, 1), "target": 20,
    })


if __name__ == "__main__":
    main()
