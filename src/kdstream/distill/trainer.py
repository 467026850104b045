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

from kdstream.distill.loss_names import CE_SAMPLED, KD_LOSSES, TAILS
from kdstream.errors import KdError
from kdstream.model_files import logit_postprocessing
from kdstream.options import corpus_option, option, options_dict, require, save_options
from kdstream.outputs import check_output, fresh_partial, partial_path, publish

LOSSES = ("ce", *KD_LOSSES, CE_SAMPLED)
PRECISIONS = ("auto", "fp32", "bf16")
DONE_FILE = "train_summary.json"  # written last: a checkpoint directory without it is incomplete
# Options --resume lets differ from the checkpoint's: they change how the run reads, logs or is
# placed, not the numbers it computes. (--logits-store is compared by the store's identity
# instead of its path when both are known; --fsdp and --device may change because checkpoints
# hold full state dicts, and the precision is compared resolved.)
RESUME_MAY_DIFFER = frozenset({"out", "resume", "overwrite", "loader_workers", "prefetch", "tensorboard",
                               "verify_store", "checkpoint_every", "fsdp", "device"})


def parse_loss_chunk(value) -> int | str | None:
    """--loss-chunk as typed: "auto", 0 (the plain path: None) or a number of positions."""
    if value is None or str(value).strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise KdError(f"--loss-chunk {value!r}: pass auto, a number of positions, or 0 for the plain path") from None
    return n or None


@dataclass(frozen=True)
class DistillOptions:
    """Train a student from a teacher's logit store (or a CE model from a store/dataset)."""

    model: str = option(help="Student: HF dir (weights → fine-tune; config only → random init) or config .json.")
    out: str = option(help="Checkpoint directory to write.")
    logits_store: str | None = option(None, "Teacher store (path or URL) to train from.")
    # tokenized with the model's tokenizer
    dataset: str | None = option(None, "Plain text to train on with --loss ce (e.g. the teacher).")
    loss: str = option("forward_kl", "ce | forward_kl | reverse_kl | jsd | ce_sampled (a sampled store: CE "
                                     "against its draws, no temperature)")
    temperature: float = option(2.0, "Softmax temperature of teacher and student in KD losses.")
    alpha_ce: float = option(0.0, "Weight of CE mixed into KD.")
    tail: str = option("bucket", "bucket (leftover mass as one class) | renormalize (top-k only)")
    beta: float = option(0.5, "JSD mixing weight.")
    epochs: int = option(4, "Passes over the training examples.")
    batch_size: int = option(16, "Examples per micro-batch (per rank).")
    lr: float = option(5e-5, "Peak learning rate (AdamW; linear warmup, then cosine decay to 0).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_ratio: float = option(0.03, "Share of the steps spent warming the learning rate up.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    seed: int = option(0, "Seed of initialization and data order.")
    tokenizer: str | None = option(None, "Tokenizer directory (default: the model's).")
    seq_len: int = option(256, "With --dataset only (a store fixes its own).")
    text_field: str = corpus_option("text_field")
    split: str = corpus_option("split")
    max_examples: int | None = option(None, "Train on only the first N examples.")
    shuffle_block: int = option(64, "Rows per contiguous read: the unit of shuffling.")
    # None (typed as 0): plain full-logits path; the memory bound is fused_head.auto_chunk's
    loss_chunk: int | str | None = option("auto", "Positions per chunk of the fused output layer + loss (bounds "
                                                  "the logits' memory); auto = a chunk's fp32 logits within 64 MiB; "
                                                  "0 = plain full-logits path.", parse=parse_loss_chunk)
    exclude: str | None = option(None, "File of example ids (one per line) to skip.")
    checkpoint_every: int | None = option(None, "Save a resumable checkpoint every N steps.")
    resume: bool = option(False, "Continue an interrupted run from its latest checkpoint in --out.")
    overwrite: bool = option(False, "Replace an existing checkpoint directory.")
    grad_accum: int = option(1, "Micro-batches per optimizer step (per rank): less memory, same update.")
    precision: str = option("auto", "auto (bf16 autocast on a CUDA device that supports it, else fp32) | fp32 | bf16")
    device: str = option("auto", "auto | cpu | cuda")
    fsdp: bool = option(False, "Under torchrun: shard weights, gradients and optimizer state (FSDP2).")
    eval_examples: int = option(0, "Hold out the last N (non-excluded) examples and report their loss.")
    eval_every: int | None = option(None, "Held-out eval every N steps (default: at the end).")
    loader_workers: int = option(0, "DataLoader processes reading the store (0: a background thread).")
    prefetch: int = option(2, "Batches read ahead (per worker).")
    # so that corruption stops the run before any training time is spent
    verify_store: bool = option(True, "Decode every chunk before step 0 so a corrupt store stops the run at once.")
    tensorboard: bool = option(True, "Also write TensorBoard events (when tensorboard is installed).")

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
        require(self.loss_chunk in (None, "auto") or (isinstance(self.loss_chunk, int) and self.loss_chunk >= 1),
                f"--loss-chunk {self.loss_chunk!r}: pass auto, a number of positions >= 1, or 0 for the plain path")
        require(self.checkpoint_every is None or self.checkpoint_every >= 1, "--checkpoint-every must be at least 1")
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other: pick one")
        require(self.grad_accum >= 1, "--grad-accum must be at least 1")
        require(self.precision in PRECISIONS, f"--precision {self.precision} is unknown: choose one of {', '.join(PRECISIONS)}")
        require(self.device in ("auto", "cpu", "cuda"), f"--device {self.device} is unknown: choose auto, cpu or cuda")
        require(self.eval_examples >= 0, "--eval-examples must be >= 0")
        require(self.eval_every is None or (self.eval_every >= 1 and self.eval_examples > 0),
                "--eval-every needs --eval-examples N (the held-out examples to evaluate)")
        require(self.loader_workers >= 0 and self.prefetch >= 0, "--loader-workers and --prefetch must be >= 0")


def fused_chunk(loss_chunk, net) -> int | None:
    """Positions per fused head + loss chunk for this student (None: the plain path). The fused
    path applies lm_head itself, so a student that post-processes its logits (Gemma 2's
    soft-capping...) gets the plain path under "auto" and a one-line refusal of an explicit chunk."""
    from kdstream.distill.fused_head import auto_chunk

    post = logit_postprocessing(net.config.to_dict())
    if loss_chunk is None or (post and loss_chunk == "auto"):
        return None
    if post:
        raise KdError(f"--loss-chunk {loss_chunk}: the fused loss applies the plain output layer, but the student "
                      f"post-processes its logits ({post}): pass --loss-chunk 0 (or auto)")
    return auto_chunk(net.get_output_embeddings().weight.shape[0]) if loss_chunk == "auto" else loss_chunk


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:  # linear warmup, then cosine decay to 0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def train(opts: DistillOptions) -> dict:
    """Train, then save a HF checkpoint (weights + tokenizer) loadable by vLLM and transformers.

    Work happens in ``OUT.partial`` (metrics, resumable checkpoints), renamed to ``OUT`` at the
    end, so ``OUT`` only ever holds a finished model. ``--resume`` continues an interrupted run
    from its latest checkpoint with the same data order, optimizer and RNG state, so the
    remaining losses are those of an uninterrupted run. Returns the summary (train_summary.json).
    """
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.checkpoint import (Position, gather_state, latest_checkpoint, load_checkpoint,
                                             read_state, run_record, save_checkpoint)
    from kdstream.distill.loader import EpochPlan, batches_per_epoch, epoch_order, stream_batches
    from kdstream.distill.metrics_log import METRICS_FILE, MetricsLog, truncate_metrics
    from kdstream.distill.objective import Objective
    from kdstream.distill.sources import load_source, read_exclude, split_rows, verify_before_training
    from kdstream.distill.student import load_model_and_tokenizer
    from kdstream.progress import progress

    device = distributed.pick_device(opts.device)
    d = distributed.init_from_env(device.type)
    require(not opts.fsdp or d.active, "--fsdp shards across ranks: launch with torchrun --nproc_per_node N (N > 1)")
    out = Path(opts.out)
    partial = partial_path(out)
    check_output(out, "distill", replace=opts.overwrite)
    if not opts.resume and not opts.overwrite and latest_checkpoint(partial) is not None:
        raise KdError(f"{partial} holds the checkpoints of an interrupted run: pass --resume to continue it, "
                      "or --overwrite to discard them and start over")
    resume_from = latest_checkpoint(partial) if opts.resume else None
    earlier = None if resume_from is None else run_record(read_state(resume_from))  # refuses a pickle early
    exclude = read_exclude(opts.exclude)
    net, tokenizer = load_model_and_tokenizer(opts.model, opts.tokenizer, opts.seed)
    source, open_source, seq_len = load_source(opts, tokenizer, net)
    bf16 = opts.precision == "bf16" or (
        opts.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    record = run_record_of(opts, bf16, source.identity if opts.logits_store else None)
    if earlier is not None:
        check_resume(earlier, record)
    max_pos = getattr(net.config, "max_position_embeddings", None)
    if max_pos and seq_len > max_pos:
        raise KdError(f"examples have {seq_len} tokens but the student's context is {max_pos}: use a longer-context student")
    if opts.logits_store is not None and opts.verify_store and d.main:
        verify_before_training(opts.logits_store)
    kept, held_out = split_rows(source, exclude, opts.eval_examples,
                                on_absent=_warn_absent(opts, len(exclude)) if d.main else None)
    num_train = len(source) if kept is None else int(kept.sum())
    steps_per_epoch = batches_per_epoch(num_train, opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    keys = ("input_ids",) if opts.loss == "ce" else ("input_ids", "topk_ids", "topk_logprobs")

    torch.manual_seed(opts.seed)
    net.to(device)
    chunk = fused_chunk(opts.loss_chunk, net)
    model = distributed.wrap(Objective(net, loss=opts.loss, temperature=opts.temperature, tail=opts.tail,
                                       beta=opts.beta, alpha_ce=opts.alpha_ce, chunk=chunk),
                             d, device, opts.fsdp)
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(opts.warmup_ratio * total_steps)))

    pos = Position()
    if resume_from is not None:
        pos = load_checkpoint(resume_from, net, optimizer, scheduler, fsdp=opts.fsdp)
        if d.main:
            truncate_metrics(partial / METRICS_FILE, pos.step)
            print(f"resuming from {resume_from} (step {pos.step}, epoch {pos.epoch})", file=sys.stderr)
    elif d.main:
        fresh_partial(out, "distill")
    distributed.barrier(d)
    if d.main:
        save_options(opts, partial)
    log = MetricsLog(partial, pos.step, opts.tensorboard) if d.main else None
    step_fn = _Step(model, optimizer, keys, opts.grad_accum, device, bf16, d, opts.fsdp)

    def evaluate() -> dict:
        return _held_out_loss(model, open_source, held_out, keys, opts.batch_size, opts.shuffle_block, device, bf16, d)

    net.train()
    start, first_step = time.perf_counter(), pos.step
    last: dict = {}
    tokens_per_step = opts.batch_size * seq_len
    with progress(total_steps * tokens_per_step, f"train {opts.loss}", unit="tok",
                  initial=pos.step * tokens_per_step, disable=not d.main) as bar:
        for epoch in range(pos.epoch, opts.epochs):
            skip = pos.batch_in_epoch if epoch == pos.epoch else 0
            plan = EpochPlan(epoch_order(len(source), opts.shuffle_block, opts.seed, epoch, kept), opts.batch_size,
                             opts.shuffle_block, keys, d.rank, d.world, start_batch=skip)
            for i, (batch, weight) in enumerate(
                    stream_batches(open_source, plan, workers=opts.loader_workers, prefetch=opts.prefetch), start=skip):
                loss, ce, kd, grad_norm = step_fn(batch, weight, opts.max_grad_norm)
                scheduler.step()
                pos = Position(step=pos.step + 1, epoch=epoch, batch_in_epoch=i + 1)
                last = {"step": pos.step, "epoch": epoch, "loss": loss, "ce": ce,
                        "kd": None if opts.loss == "ce" else kd, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}
                if len(held_out) and ((opts.eval_every and pos.step % opts.eval_every == 0) or pos.step == total_steps):
                    last.update(evaluate())
                bar.update(tokens_per_step)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                if log is not None:
                    log.write(last)
                if opts.checkpoint_every and pos.step % opts.checkpoint_every == 0 and pos.step < total_steps:
                    model_state, optim_state = gather_state(net, optimizer, opts.fsdp)  # collective under FSDP
                    if d.main:
                        log.flush()
                        save_checkpoint(partial, net, model_state, optim_state, scheduler, pos, record)
                    distributed.barrier(d)
    seconds = time.perf_counter() - start
    summary = {"steps": pos.step, "epochs": opts.epochs, "examples": num_train, "held_out": int(len(held_out)),
               "seq_len": seq_len, "final_loss": last.get("loss"), "final_eval_loss": last.get("eval_loss"),
               "seconds": round(seconds, 2), "world_size": d.world, "device": str(device),
               "precision": "bf16" if bf16 else "fp32",
               "tokens_per_s": round((pos.step - first_step) * tokens_per_step / seconds, 1) if seconds else None,
               "resumed_from_step": None if resume_from is None else int(resume_from.name.split("-")[1]),
               "store_identity": record.store_identity}
    model_state, _ = gather_state(net, optimizer, opts.fsdp)
    if d.main:
        log.close()
        _finish(net, model_state, tokenizer, partial, out, summary)
    distributed.barrier(d)
    distributed.shutdown(d)
    return summary


def run_record_of(opts: DistillOptions, bf16: bool, store_identity: str | None):
    """The options as a checkpoint records them (JSON types; the precision resolved)."""
    from kdstream.distill.checkpoint import RunRecord

    options = json.loads(json.dumps(options_dict(opts)))
    options["precision"] = "bf16" if bf16 else "fp32"
    return RunRecord(options=options, store_identity=store_identity)


def _flag(name: str, value) -> str:
    flag = "--" + name.replace("_", "-")
    return f"no {flag}" if value is None or value is False else flag if value is True else f"{flag} {value}"


def check_resume(earlier, now) -> None:
    """Refuse to continue a checkpoint under options that change the result (see RESUME_MAY_DIFFER):
    another store, batch size, lr or loss would train rows twice, skip them or mix objectives."""
    fix = "rerun with the checkpoint's options or drop --resume (--overwrite starts over)"
    by_identity = earlier.store_identity is not None and now.store_identity is not None
    if by_identity and earlier.store_identity != now.store_identity:
        raise KdError(f"--resume: the checkpoint was made from another store (identity {earlier.store_identity[:12]}), "
                      f"--logits-store {now.options['logits_store']} is {now.store_identity[:12]}: {fix}")
    skip = RESUME_MAY_DIFFER | ({"logits_store"} if by_identity else set())
    for name, value in now.options.items():
        if name in skip or earlier.options.get(name) == value:
            continue
        raise KdError(f"--resume: the checkpoint was made with {_flag(name, earlier.options.get(name))}, "
                      f"this run has {_flag(name, value)}: {fix}")


def _warn_absent(opts: DistillOptions, count: int):
    """Say which --exclude ids the training data does not hold (a list made for another store?)."""
    def warn(absent: list[int]) -> None:
        where = "store" if opts.logits_store else "dataset"
        shown = ", ".join(map(str, absent[:10])) + (", …" if len(absent) > 10 else "")
        print(f"warning: {len(absent)} of {count} ids in --exclude {opts.exclude} are not in the {where}: {shown}",
              file=sys.stderr)

    return warn


class _Step:
    """One optimizer step on this rank's share of a global batch, in ``grad_accum`` micro-batches.

    Each micro-batch's mean loss is weighted by its share of the global batch's rows (times
    world size, as DDP/FSDP average gradients over ranks), so the update equals one backward of
    the global-batch mean whatever grad_accum and world size are. Every rank runs the same number
    of forward/backward passes (a rank without rows for a micro-batch runs one row at weight 0)
    because FSDP gathers weights collectively in each one.
    """

    def __init__(self, model, optimizer, keys, grad_accum, device, bf16, d, fsdp) -> None:
        self.model, self.optimizer, self.keys, self.grad_accum = model, optimizer, keys, grad_accum
        self.device, self.bf16, self.d, self.fsdp = device, bf16, d, fsdp

    def _sync(self, on: bool):
        """Gradient all-reduce only in the last micro-batch's backward."""
        import contextlib

        if self.fsdp:
            self.model.set_requires_gradient_sync(on)
        elif self.d.active and not on:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, batch: dict, weight: float, max_grad_norm: float) -> tuple[float, float, float, float]:
        import numpy as np
        import torch

        from kdstream.distill import distributed

        rows = batch["input_ids"].shape[0]
        parts = np.array_split(np.arange(rows), self.grad_accum)
        self.optimizer.zero_grad(set_to_none=True)
        logged = torch.zeros(3, dtype=torch.float64)
        for j, idx in enumerate(parts):
            share = len(idx) / rows
            idx = idx if len(idx) else np.arange(1)  # keep collectives in step; weight 0 below
            micro = {k: batch[k][torch.from_numpy(idx)].to(self.device, non_blocking=True) for k in self.keys}
            with self._sync(j == len(parts) - 1):
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                    out = self.model(**micro)  # [loss, ce, kd], means over this micro-batch's positions
                (out[0] * (weight * share)).backward()
            logged += out.detach().double().cpu() * share
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        loss, ce, kd = (distributed.all_mean(float(v), weight, self.d) for v in logged)
        return loss, ce, kd, float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)


def _held_out_loss(model, open_source, rows, keys, batch_size, block_rows, device, bf16, d) -> dict:
    """Mean [loss, ce, kd] over the held-out rows, split across ranks (every rank runs the same
    number of forward passes, for FSDP), without gradients; the model is left in train mode."""
    import numpy as np
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.loader import BlockReader

    reader = BlockReader(open_source(), block_rows, keys)
    mine = np.array_split(rows, d.world)[d.rank]
    per_rank = -(-len(rows) // d.world)  # ceil: the largest rank share
    passes = -(-per_rank // batch_size)
    sums = torch.zeros(3, dtype=torch.float64)
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    core.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for b in range(passes):
            idx = mine[b * batch_size : (b + 1) * batch_size]
            n = len(idx)
            batch = reader.take(idx if n else rows[:1])
            out = core(**{k: torch.from_numpy(batch[k]).to(device) for k in keys})
            sums += out.double().cpu() * n
    core.train()
    loss, ce, kd = (v / len(rows) for v in distributed.all_sum(sums.tolist(), d))
    return {"eval_loss": loss, "eval_ce": ce, "eval_kd": kd}


def _finish(net, model_state: dict, tokenizer, partial: Path, out: Path, summary: dict) -> None:
    """Save the final model and move ``OUT.partial`` to ``OUT`` (the summary file last)."""
    from kdstream.distill.checkpoint import save_model

    save_model(net, {k: v.detach().cpu() for k, v in model_state.items()}, partial)
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    (partial / DONE_FILE).write_text(json.dumps(summary, indent=2))
    publish(partial, out, "distill")
