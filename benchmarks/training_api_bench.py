"""kdstream.torch against distill: the Hugging Face Trainer's step time on a store, the
StoreDataset + DataLoader read rate against what training consumes, and KDLoss.from_hidden's peak
memory against the plain path.

Step time: one store (a random GPT-NeoX teacher of hidden 256 via `precompute-logits --backend hf`,
V = 4096, 256 examples x 128 tokens, top-16) and one student (the demo's shape: 3 layers, hidden
192, saved weights); batch 8, forward KL at T = 2 on the fused path, fp32 on the CPU. distill runs
in-process through kdstream.distill.train, a step's time the difference of a run of 2·steps and
one of steps, divided by steps; the Trainer runs KDTrainer.train(), a step's time the gap between
consecutive step ends, median over the steps after two warm-up ones (data wait included in both).

Read rate: examples/s of StoreDataset through DataLoader (2 worker processes, batch 8, a random
sampler and ds.block_order), timed over two epochs after the first batch, against the examples/s
the distill step consumes (batch / step time).

Memory: V = 50,304, 8 x 257 tokens, top-64, a 1-layer GPT-NeoX of hidden 256 (as
fused_loss_bench): KDLoss on the model's full logits vs KDLoss.from_hidden on the final hidden
states (the model makes one position's logits), forward + backward, each in its own process; peak
= rise of max RSS over the RSS before the first step.

    python -m benchmarks.training_api_bench [--steps 16]   # saves benchmarks/results/training_api_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import ROOT, save

V, EXAMPLES, SEQ, TOPK, BATCH = 4096, 256, 128, 16, 8


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_path(path: str, steps: int = 2) -> dict:
    """Peak RSS rise of KDLoss on full logits ("plain") or from the hidden states ("from_hidden")."""
    import torch

    from benchmarks.fixtures import tiny_gpt_neox
    from kdstream.torch import KDLoss

    vocab, b, length, k, h = 50304, 8, 257, 64, 256
    net = tiny_gpt_neox(vocab, hidden=h, layers=1, heads=4, positions=512)
    batch = {"input_ids": torch.randint(0, vocab, (b, length)),
             "topk_ids": torch.randint(0, vocab, (b, length - 1, k)),
             "topk_logprobs": torch.log_softmax(torch.randn(b, length - 1, k), -1) - 0.1}
    kd = KDLoss("forward_kl", temperature=2.0)
    before, times = rss_mb(), []
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        t = time.perf_counter()
        if path == "plain":
            loss = kd(net(input_ids=batch["input_ids"]).logits, batch)
        else:
            out = net(input_ids=batch["input_ids"], logits_to_keep=1, output_hidden_states=True)
            loss = kd.from_hidden(out.hidden_states[-1], net.get_output_embeddings(), batch)
        loss.backward()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rise_mb": round(peak - before, 1), "step_s": round(min(times), 3)}


def build(tmp: Path) -> tuple[Path, Path]:
    """(store, student dir) in ``tmp``: a tokenizer from the demo corpus, a random teacher, its store."""
    from benchmarks.fixtures import tiny_gpt_neox
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.text.tokenizers import train_bpe_tokenizer

    docs = demo_documents()
    tok = train_bpe_tokenizer(docs, V, tmp / "tokenizer")
    (tmp / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def model(path: Path, layers: int, hidden: int, heads: int, seed: int) -> Path:
        tiny_gpt_neox(V, seed=seed, hidden=hidden, layers=layers, heads=heads, positions=2 * SEQ,
                      eos=tok.eos_token_id).save_pretrained(str(path))
        tok.save_pretrained(str(path))
        return path

    teacher, student = model(tmp / "teacher", 2, 256, 4, 1), model(tmp / "student", 3, 192, 3, 2)
    store = tmp / "store.zarr"
    subprocess.run([sys.executable, "-m", "kdstream", "precompute-logits", "--backend", "hf", "--device", "cpu",
                    "--model", str(teacher), "--dataset", str(tmp / "corpus.jsonl"), "--out", str(store),
                    "--top-k", str(TOPK), "--seq-len", str(SEQ), "--max-examples", str(EXAMPLES),
                    "--dtype", "float32"], check=True, capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return store, student


def median_gap(ends: list[float], warmup: int = 2) -> float:
    gaps = [b - a for a, b in zip(ends, ends[1:])][warmup - 1:]
    return statistics.median(gaps)


def distill_step_s(store: Path, student: Path, out: Path, steps: int) -> float:
    """distill through its public entry (kdstream.distill.train), in-process: seconds per step, as
    (a run of 2·steps − a run of steps) / steps, so that setup and warm-up cancel."""
    from kdstream.distill import DistillOptions, train

    def seconds(n: int, name: str) -> float:
        opts = DistillOptions(model=str(student), out=f"{out}-{name}", logits_store=str(store), batch_size=BATCH,
                              loss="forward_kl", temperature=2.0, lr=1e-4, epochs=1, max_examples=n * BATCH,
                              tensorboard=False, device="cpu")
        return train(opts)["seconds"]

    return (seconds(2 * steps, "long") - seconds(steps, "short")) / steps


def trainer_step_s(store: Path, student: Path, out: Path, steps: int) -> float:
    """KDTrainer.train() on the same store, student, batch and loss: seconds per step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

    from kdstream.torch import KDLoss, KDTrainer, StoreDataset

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             learning_rate=1e-4, max_grad_norm=1.0, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=steps, remove_unused_columns=False, dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer = KDTrainer(model=AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32), args=args,
                        train_dataset=StoreDataset(store), processing_class=AutoTokenizer.from_pretrained(str(student)),
                        kd_loss=KDLoss("forward_kl", temperature=2.0), callbacks=[Clock()])
    trainer.train()
    return median_gap(ends)


def read_rate(store: Path, order: str, epochs: int = 2) -> float:
    """Examples/s of StoreDataset + DataLoader (2 workers, batch 8), after the first batch."""
    import torch

    from kdstream.torch import StoreDataset, collate

    ds = StoreDataset(store)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)) if order == "random" \
        else ds.block_order(seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, sampler=sampler, collate_fn=collate, num_workers=2,
                                         persistent_workers=True)
    n, start = 0, None
    for _ in range(epochs):
        for batch in loader:
            if start is None:
                start = time.perf_counter()  # workers started, first batch in
                continue
            n += batch["input_ids"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--_memory", default=None)
    a = ap.parse_args()
    if a._memory is not None:
        print(json.dumps(memory_path(a._memory)))
        return
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store, student = build(tmp)
        distill_s = distill_step_s(store, student, tmp / "distill-out", a.steps)
        trainer_s = trainer_step_s(store, student, tmp / "trainer-out", a.steps)
        distill_again_s = distill_step_s(store, student, tmp / "distill-out2", a.steps)  # drift check
        consumed = BATCH / min(distill_s, distill_again_s)  # examples/s training takes
        rates = {order: read_rate(store, order) for order in ("random", "block_order")}
    memory = {}
    for path in ("plain", "from_hidden"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.training_api_bench", "--_memory", path],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
        memory[path] = json.loads(out.strip().splitlines()[-1])
    distill_mean = (distill_s + distill_again_s) / 2
    save("training_api_bench", {
        "setup": {"vocab": V, "examples": EXAMPLES, "seq_len": SEQ, "top_k": TOPK, "batch": BATCH, "steps": a.steps,
                  "student": "GPT-NeoX 3 layers, hidden 192", "loss": "forward_kl T=2, fused head", "device": "cpu"},
        "distill_step_s": [round(distill_s, 4), round(distill_again_s, 4)],
        "hf_trainer_step_s": round(trainer_s, 4),
        "trainer_over_distill": round(trainer_s / distill_mean, 3),
        "consumed_examples_per_s": round(consumed, 1),
        "read_examples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "read_over_consumed": {k: round(v / consumed, 1) for k, v in rates.items()},
        "memory_v50304": {**memory, "from_hidden_over_plain":
                          round(memory["from_hidden"]["peak_rise_mb"] / memory["plain"]["peak_rise_mb"], 3)},
    })


if __name__ == "__main__":
    main()
