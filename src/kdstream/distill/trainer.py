"""distill: train a causal LM from a logit store (KD) or from plain tokens (CE).

One loop for the three models of a study: teacher (CE), baseline (CE), student (KD), so they
share data order, optimizer and schedule and differ only in the loss.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdstream.distill.losses import KD_LOSSES, TAILS
from kdstream.errors import KdError
from kdstream.options import require, save_options
from kdstream.outputs import fresh_partial, partial_path, publish

LOSSES = ("ce", *KD_LOSSES)
DONE_FILE = "train_summary.json"  # written last: a checkpoint directory without it is incomplete


@dataclass(frozen=True)
class DistillOptions:
    """Train a student from a teacher's logit store (or a CE model from a store/dataset)."""

    model: str  # HF directory (weights: fine-tune; config.json only: random init) or config .json
    out: str
    logits_store: str | None = None
    dataset: str | None = None  # CE from plain text (teacher training), tokenized with the model's tokenizer
    loss: str = "forward_kl"  # ce | forward_kl | reverse_kl | jsd
    temperature: float = 2.0
    alpha_ce: float = 0.0  # weight of the CE term mixed into a KD loss
    tail: str = "bucket"  # bucket: leftover mass as one class; renormalize: top-k only
    beta: float = 0.5  # generalized JSD mixing weight
    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    tokenizer: str | None = None  # default: the model directory
    seq_len: int = 256  # with --dataset only; a store fixes its own
    text_field: str = "text"
    split: str = "train"
    max_examples: int | None = None
    shuffle_block: int = 64  # rows per contiguous read; the unit of shuffling
    loss_chunk: int | None = 4096  # positions per fused-loss chunk (bounds logits memory); None: plain path
    exclude: str | None = None  # file of example ids (one per line) never to train on
    checkpoint_every: int | None = None  # steps between resumable checkpoints (None: only the end)
    resume: bool = False  # continue from the latest checkpoint of an interrupted run in --out
    overwrite: bool = False

    def __post_init__(self) -> None:
        require((self.logits_store is None) != (self.dataset is None),
                "pass exactly one of --logits-store STORE or --dataset DATA")
        require(self.loss in LOSSES, f"--loss {self.loss} is unknown: choose one of {', '.join(LOSSES)}")
        require(self.loss == "ce" or self.logits_store is not None,
                f"--loss {self.loss} needs teacher targets: pass --logits-store (or use --loss ce)")
        require(self.tail in TAILS, f"--tail {self.tail} is unknown: choose one of {', '.join(TAILS)}")
        require(self.temperature > 0, f"--temperature {self.temperature} must be > 0")
        require(0.0 <= self.alpha_ce <= 1.0, f"--alpha-ce {self.alpha_ce} must be in [0, 1]")
        require(0.0 <= self.beta <= 1.0, f"--beta {self.beta} must be in [0, 1]")
        require(self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be at least 1")
        require(self.lr > 0, f"--lr {self.lr} must be > 0")
        require(0.0 <= self.warmup_ratio < 1.0, f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        require(self.shuffle_block >= 1, "--shuffle-block must be at least 1")
        require(self.loss_chunk is None or self.loss_chunk >= 1, "--loss-chunk must be at least 1 (0 on the CLI: plain path)")
        require(self.checkpoint_every is None or self.checkpoint_every >= 1, "--checkpoint-every must be at least 1")
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other: pick one")


def _read_exclude(path: str | None) -> frozenset[int]:
    if path is None:
        return frozenset()
    p = Path(path)
    if not p.is_file():
        raise KdError(f"exclude list {p} not found: pass a file of example ids, one per line")
    try:
        return frozenset(int(line) for line in p.read_text().split())
    except ValueError:
        raise KdError(f"exclude list {p} must hold integer example ids, one per line") from None


def _check_store_matches(store, tokenizer, net) -> None:
    """Refuse, before any step, a student that cannot be trained on this store's ids."""
    from kdstream.data import tokenizer_fingerprint

    mine, theirs = tokenizer_fingerprint(tokenizer), store.attrs.get("tokenizer", {})
    if mine["sha256"] != theirs.get("sha256"):
        raise KdError(
            f"the student's tokenizer (vocab {mine['vocab_size']}, sha256 {mine['sha256'][:12]}) differs from the "
            f"store's (vocab {theirs.get('vocab_size')}, sha256 {str(theirs.get('sha256'))[:12]}): use a student "
            "that shares the teacher's tokenizer, or pass --tokenizer with the teacher's"
        )
    if net.config.vocab_size < store.vocab_size:
        raise KdError(
            f"the student's output layer has {net.config.vocab_size} classes but the store's ids go up to "
            f"{store.vocab_size}: build the student with vocab_size >= {store.vocab_size}"
        )


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:  # linear warmup, then cosine decay to 0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _load_source(opts: DistillOptions, tokenizer, net):
    """The examples to train on: a logit store (checked against the student) or a packed corpus."""
    if opts.logits_store is not None:
        from kdstream.storage import open_store

        store = open_store(opts.logits_store)
        _check_store_matches(store, tokenizer, net)
        return store, store.seq_len
    from kdstream.data import load_corpus, pack_examples

    corpus = load_corpus(opts.dataset, opts.text_field, opts.split)
    return pack_examples(corpus.texts, tokenizer, opts.seq_len, opts.max_examples), opts.seq_len


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def train(opts: DistillOptions) -> dict:
    """Train, then save a HF checkpoint (weights + tokenizer) loadable by vLLM and transformers.

    Work happens in ``OUT.partial`` (metrics, resumable checkpoints), renamed to ``OUT`` at the
    end, so ``OUT`` only ever holds a finished model. ``--resume`` continues an interrupted run
    from its latest checkpoint with the same data order, optimizer and RNG state, so the
    remaining losses are those of an uninterrupted run. Returns the summary (train_summary.json).
    """
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint
    from kdstream.distill.loader import batches_per_epoch, iterate_batches
    from kdstream.distill.objective import Objective
    from kdstream.distill.student import load_model_and_tokenizer
    from kdstream.progress import progress

    d = distributed.init_from_env()
    out = Path(opts.out)
    partial = partial_path(out)
    if (out / DONE_FILE).exists() and not opts.overwrite:
        raise KdError(f"{out} already holds a trained model: pass --overwrite to replace it")
    exclude = _read_exclude(opts.exclude)
    net, tokenizer = load_model_and_tokenizer(opts.model, opts.tokenizer, opts.seed)
    source, seq_len = _load_source(opts, tokenizer, net)
    max_pos = getattr(net.config, "max_position_embeddings", None)
    if max_pos and seq_len > max_pos:
        raise KdError(f"examples have {seq_len} tokens but the student's context is {max_pos}: use a longer-context student")

    kept = len(source)
    if exclude:  # only then are the ids needed
        all_ids = source.read(0, len(source), ("example_id",))["example_id"]
        kept = int((~np.isin(all_ids, list(exclude))).sum())
    if kept == 0:
        raise KdError("every example is excluded: check --exclude")
    steps_per_epoch = batches_per_epoch(kept, opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    keys = ("input_ids",) if opts.loss == "ce" else ("input_ids", "topk_ids", "topk_logprobs")

    torch.manual_seed(opts.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(opts.warmup_ratio * total_steps)))

    pos = Position()
    resume_from = latest_checkpoint(partial) if opts.resume else None
    if resume_from is not None:
        pos = load_checkpoint(resume_from, net, optimizer, scheduler)
        if d.main:
            _truncate_metrics(partial / "metrics.jsonl", pos.step)
            print(f"resuming from {resume_from} (step {pos.step}, epoch {pos.epoch})", file=sys.stderr)
    elif d.main:
        fresh_partial(out)
    distributed.barrier(d)
    model = Objective(net, loss=opts.loss, temperature=opts.temperature, tail=opts.tail, beta=opts.beta,
                      alpha_ce=opts.alpha_ce, chunk=opts.loss_chunk)
    if d.active:  # gradients are averaged across ranks in backward
        model = torch.nn.parallel.DistributedDataParallel(model)
    if d.main:
        save_options(opts, partial)
    metrics = (partial / "metrics.jsonl").open("a") if d.main else None
    net.train()
    start, first_step = time.perf_counter(), pos.step
    last: dict = {}
    tokens_per_step = opts.batch_size * seq_len
    with progress(total_steps * tokens_per_step, f"train {opts.loss}", unit="tok",
                  initial=pos.step * tokens_per_step, disable=not d.main) as bar:
        for epoch in range(pos.epoch, opts.epochs):
            skip = pos.batch_in_epoch if epoch == pos.epoch else 0
            batches = iterate_batches(source, keys, opts.batch_size, opts.seed, epoch, opts.shuffle_block, exclude, skip)
            for i, batch in enumerate(batches, start=skip):
                rows, weight = distributed.local_slice(len(batch["input_ids"]), d)
                local = {k: torch.from_numpy(batch[k][rows]) for k in keys}  # input_ids (b, L), topk (b, L-1, k)
                loss, ce, kd = model(**local)
                kd = None if opts.loss == "ce" else kd
                optimizer.zero_grad(set_to_none=True)
                (loss * weight).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), opts.max_grad_norm)
                optimizer.step()
                scheduler.step()
                pos = Position(step=pos.step + 1, epoch=epoch, batch_in_epoch=i + 1)
                last = {"step": pos.step, "epoch": epoch, "loss": distributed.all_mean(loss.item(), weight, d),
                        "ce": distributed.all_mean(ce.item(), weight, d),
                        "kd": None if kd is None else distributed.all_mean(kd.item(), weight, d),
                        "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
                bar.update(tokens_per_step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", epoch=epoch)
                if metrics is not None:
                    metrics.write(json.dumps(last) + "\n")
                if opts.checkpoint_every and pos.step % opts.checkpoint_every == 0 and pos.step < total_steps:
                    if d.main:
                        metrics.flush()
                        save_checkpoint(partial, net, optimizer, scheduler, pos)
                    distributed.barrier(d)
    seconds = time.perf_counter() - start
    summary = {"steps": pos.step, "epochs": opts.epochs, "examples": kept, "seq_len": seq_len,
               "final_loss": last.get("loss"), "seconds": round(seconds, 2), "world_size": d.world,
               "tokens_per_s": round((pos.step - first_step) * tokens_per_step / seconds, 1) if seconds else None,
               "resumed_from_step": None if resume_from is None else int(resume_from.name.split("-")[1])}
    if d.main:
        metrics.close()
        _finish(net, tokenizer, partial, out, summary)
    distributed.barrier(d)
    distributed.shutdown(d)
    return summary


def _finish(net, tokenizer, partial: Path, out: Path, summary: dict) -> None:
    """Save the final model and move ``OUT.partial`` to ``OUT`` (the summary file last)."""
    net.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    (partial / DONE_FILE).write_text(json.dumps(summary, indent=2))
    publish(partial, out)
