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
from pathlib import Path

from kdstream.distill.cross_tokenizer import SKIPPED
from kdstream.distill.options import DistillOptions
from kdstream.errors import KdError
from kdstream.model_files import logit_postprocessing
from kdstream.options import require, save_options
from kdstream.outputs import check_output, fresh_partial, partial_path, publish

DONE_FILE = "train_summary.json"  # written last: a checkpoint directory without it is incomplete


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
    from kdstream.distill import distributed

    run, data, tokenizer = _setup(opts)
    log = _start(run)
    start, first_step = time.perf_counter(), run.pos.step
    last = _train_epochs(run, data, log)
    summary = _summary(run, data, last, time.perf_counter() - start, first_step)
    _save(run, tokenizer, log, summary)
    distributed.shutdown(run.d)
    return summary


# --- setup: load and check everything; nothing is written yet ------------------------------------

def _setup(opts: DistillOptions):
    """(Run, TrainData, tokenizer): place the run, find its resume point, load the student and
    the data, check them against each other and the checkpoint, build the optimizer, then restore
    the checkpoint into it."""
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.checkpoint import run_record
    from kdstream.distill.cross_tokenizer import with_cross_defaults
    from kdstream.distill.resume_check import check_resume, run_record_of
    from kdstream.distill.run_state import Position, Run
    from kdstream.distill.sources import (
        cross_targets,
        load_online_teacher,
        load_source,
        read_exclude,
        verify_before_training,
    )
    from kdstream.distill.student import load_model_and_tokenizer
    from kdstream.storage.content import store_key

    device = distributed.pick_device(opts.device)
    d = distributed.init_from_env(device.type)
    require(not opts.fsdp or d.active, "--fsdp shards across ranks: launch with torchrun --nproc_per_node N (N > 1)")
    partial, resume_from, state = _resume_point(opts)
    exclude = read_exclude(opts.exclude)
    net, tokenizer = load_model_and_tokenizer(opts.model, opts.tokenizer, opts.seed)
    teacher = load_online_teacher(opts.teacher, tokenizer, net, device) if opts.teacher else None
    source, open_source, seq_len = load_source(opts, tokenizer, net)
    cross = cross_targets(opts, source, tokenizer) if opts.logits_store else None
    opts = with_cross_defaults(opts, cross.mode if cross else None)
    bf16 = opts.precision == "bf16" or (
        opts.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    # the store's identity, or its content's digest when it has none (storage/content.py): not its path
    record = run_record_of(opts, bf16, store_key(source) if opts.logits_store else None)
    if state is not None:
        check_resume(run_record(state), record)
    _check_context(net, seq_len)
    if opts.logits_store is not None and opts.verify_store and d.main:
        verify_before_training(opts.logits_store)
    data = _setup_data(opts, d, (source, open_source, seq_len), exclude, cross,
                       _byte_lengths(tokenizer) if opts.eval_examples and cross is None else None)
    model = _setup_model(opts, net, device, d, teacher, cross.mode if cross else None)
    optimizer, scheduler = _setup_optimizer(opts, net, data.total_steps)
    run = Run(opts=opts, net=net, model=model, optimizer=optimizer, scheduler=scheduler, device=device, d=d,
              bf16=bf16, partial=partial, record=record, resumed_from=resume_from, pos=Position())
    if state is not None:
        run.pos = _restore(run, data, state)
    return run, data, tokenizer


def _resume_point(opts: DistillOptions):
    """(OUT.partial, the checkpoint to resume or None, its checked state or None) after checking
    that --out may be written and that an interrupted run there is neither ignored nor lost."""
    from kdstream.distill.checkpoint import latest_checkpoint, read_state

    out = Path(opts.out)
    partial = partial_path(out)
    check_output(out, "distill", replace=opts.overwrite)
    if not opts.resume and not opts.overwrite and latest_checkpoint(partial) is not None:
        raise KdError(f"{partial} holds the checkpoints of an interrupted run: pass --resume to continue it, "
                      "or --overwrite to discard them and start over")
    resume_from = latest_checkpoint(partial) if opts.resume else None
    state = None if resume_from is None else read_state(resume_from)  # refuses a pickle or a damaged file early
    return partial, resume_from, state


def _restore(run, data, state: dict):
    """Load the checkpoint being resumed into the fresh model, optimizer and scheduler, once its
    position is one of this run's plan and its schedule the options'; returns its position."""
    from kdstream.distill.checkpoint import check_position, load_checkpoint

    check_position(run.resumed_from, state, data.total_steps // run.opts.epochs, run.opts.epochs)
    return load_checkpoint(run.resumed_from, state, run.net, run.optimizer, run.scheduler)


def _check_context(net, seq_len: int) -> None:
    max_pos = getattr(net.config, "max_position_embeddings", None)
    if max_pos and seq_len > max_pos:
        raise KdError(f"examples have {seq_len} tokens but the student's context is {max_pos}: use a longer-context student")


def _setup_data(opts: DistillOptions, d, loaded: tuple, exclude, cross=None, byte_lengths=None):
    """TrainData from the loaded (source, open_source, seq_len): the rows kept after --exclude
    and --eval-examples, the held-out rows, and the steps the kept rows make."""
    from kdstream.distill.loader import batches_per_epoch
    from kdstream.distill.run_state import TrainData
    from kdstream.distill.sources import split_rows

    source, open_source, seq_len = loaded
    kept, held_out = split_rows(source, exclude, opts.eval_examples,
                                on_absent=_warn_absent(opts, len(exclude)) if d.main else None,
                                max_rows=opts.max_examples)
    num_train = len(source) if kept is None else int(kept.sum())
    keys = ("input_ids",) if opts.loss == "ce" or opts.teacher else ("input_ids", "topk_ids", "topk_logprobs")
    if cross is not None:
        from kdstream.distill.cross_tokenizer import store_keys

        keys = store_keys(cross.mode)
    if getattr(source, "conversations", False):  # the loss only at the target rows (topk_len > 0)
        # across tokenizers: each row's conversation is rendered anew (cross_conversations.py)
        keys = (*keys, "topk_len") + (("doc_index",) if cross is not None else ())
    return TrainData(source=source, open_source=open_source, seq_len=seq_len, kept=kept, held_out=held_out,
                     keys=keys, num_train=num_train, transform=cross, byte_lengths=byte_lengths,
                     total_steps=batches_per_epoch(num_train, opts.batch_size) * opts.epochs)


def _byte_lengths(tokenizer):
    """(V,) bytes of each token id for the held-out bits per byte; None (with a warning) for a
    tokenizer whose tokens' bytes cannot be read off its vocabulary: the run still trains."""
    from kdstream.text.token_bytes import byte_vocab

    try:
        return byte_vocab(tokenizer).lengths
    except KdError as exc:
        print(f"warning: no held-out bits per byte: {exc}", file=sys.stderr)
        return None


def _warn_absent(opts: DistillOptions, count: int):
    """Say which --exclude ids the training data does not hold (a list made for another store?)."""
    def warn(absent: list[int]) -> None:
        where = "store" if opts.logits_store else "dataset"
        shown = ", ".join(map(str, absent[:10])) + (", …" if len(absent) > 10 else "")
        print(f"warning: {len(absent)} of {count} ids in --exclude {opts.exclude} are not in the {where}: {shown}",
              file=sys.stderr)

    return warn


def _setup_model(opts: DistillOptions, net, device, d, teacher=None, cross: str | None = None):
    """The student on its device inside the loss (Objective), wrapped for DDP / FSDP2; an online
    teacher rides along unwrapped (frozen, replicated on every rank). A cross-tokenizer run takes
    the plain path (its losses gather per chunk, not per position)."""
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.objective import Objective

    torch.manual_seed(opts.seed)
    net.to(device)
    chunk = None if cross else fused_chunk(opts.loss_chunk, net)
    return distributed.wrap(Objective(net, loss=opts.loss, temperature=opts.temperature, tail=opts.tail,
                                      beta=opts.beta, alpha_ce=opts.alpha_ce, chunk=chunk, teacher=teacher,
                                      cross=cross, alm_temperature=opts.alm_temperature, exact_rows=opts.exact_rows),
                            d, device, opts.fsdp)


def _setup_optimizer(opts: DistillOptions, net, total_steps: int):
    """(AdamW, its warmup + cosine schedule); called after ``_setup_model``, whose FSDP wrapping
    replaces the parameters with sharded ones: those are the ones to optimize."""
    import torch

    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(opts.warmup_ratio * total_steps)))
    return optimizer, scheduler


def _start(run):
    """Continue the resumed run's OUT.partial (its metrics cut back to the checkpoint) or create a
    fresh one, save the options there; returns the metrics log (rank 0; None elsewhere), the model in train mode."""
    from kdstream.distill import distributed
    from kdstream.distill.metrics_log import METRICS_FILE, MetricsLog, truncate_metrics

    if run.resumed_from is not None:  # restored by _setup
        if run.d.main:
            truncate_metrics(run.partial / METRICS_FILE, run.pos.step)
            print(f"resuming from {run.resumed_from} (step {run.pos.step}, epoch {run.pos.epoch})", file=sys.stderr)
    elif run.d.main:
        fresh_partial(Path(run.opts.out), "distill")
    distributed.barrier(run.d)
    if run.d.main:
        save_options(run.opts, run.partial)
    log = MetricsLog(run.partial, run.pos.step, run.opts.tensorboard) if run.d.main else None
    run.net.train()
    return log


# --- the train loop --------------------------------------------------------------------------------

def _train_epochs(run, data, log) -> dict:
    """Every remaining batch of every remaining epoch from ``run.pos``; returns the last step's metrics."""
    from kdstream.distill import step
    from kdstream.distill.run_state import Position
    from kdstream.progress import progress

    last: dict = {}
    tokens_per_step = run.opts.batch_size * data.seq_len
    with progress(data.total_steps * tokens_per_step, f"train {run.opts.loss}", unit="tok",
                  initial=run.pos.step * tokens_per_step, disable=not run.d.main) as bar:
        for epoch in range(run.pos.epoch, run.opts.epochs):
            for i, (batch, weight) in _epoch_batches(run, data, epoch):
                for reason, n in batch.get(SKIPPED, {}).items():
                    run.skipped[reason] = run.skipped.get(reason, 0) + n
                losses = step.optimizer_step(run, data.keys, batch, weight)
                run.scheduler.step()
                run.pos = Position(step=run.pos.step + 1, epoch=epoch, batch_in_epoch=i + 1)
                last = _metrics(run, data, losses)
                bar.update(tokens_per_step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", epoch=epoch)
                if log is not None:
                    log.write(last)
                _checkpoint_if_due(run, data, log)
    return last


def _epoch_batches(run, data, epoch: int):
    """(global batch index, (this rank's batch, its loss weight)) of ``epoch``, from where a resumed run stopped."""
    from kdstream.distill.loader import EpochPlan, epoch_order, stream_batches

    opts = run.opts
    skip = run.pos.batch_in_epoch if epoch == run.pos.epoch else 0
    plan = EpochPlan(epoch_order(len(data.source), opts.shuffle_block, opts.seed, epoch, data.kept), opts.batch_size,
                     opts.shuffle_block, data.keys, run.d.rank, run.d.world, start_batch=skip, transform=data.transform)
    return enumerate(stream_batches(data.open_source, plan, workers=opts.loader_workers, prefetch=opts.prefetch),
                     start=skip)


def _metrics(run, data, losses: tuple) -> dict:
    """The metrics.jsonl record of the step just taken, with the held-out loss when it is due."""
    from kdstream.distill.held_out import held_out_loss

    loss, ce, kd, grad_norm = losses
    record = {"step": run.pos.step, "epoch": run.pos.epoch, "loss": loss, "ce": ce,
              "kd": None if run.opts.loss == "ce" else kd, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm}
    every, at = run.opts.eval_every, run.pos.step
    if len(data.held_out) and ((every and at % every == 0) or at == data.total_steps):
        record.update(held_out_loss(run, data))
    return record


def _checkpoint_if_due(run, data, log) -> None:
    """Every --checkpoint-every steps but the last (the final save follows): gather (a collective
    under FSDP), rank 0 writes, every rank waits."""
    from kdstream.distill import checkpoint, distributed

    every = run.opts.checkpoint_every
    if not (every and run.pos.step % every == 0 and run.pos.step < data.total_steps):
        return
    model_state, optim_state = checkpoint.gather_state(run.net, run.optimizer, run.opts.fsdp)
    if run.d.main:
        log.flush()
        checkpoint.save_checkpoint(run, model_state, optim_state)
    distributed.barrier(run.d)


# --- save ------------------------------------------------------------------------------------------

def _summary(run, data, last: dict, seconds: float, first_step: int) -> dict:
    """train_summary.json: what was trained, how fast, and the final losses."""
    tokens_per_step = run.opts.batch_size * data.seq_len
    return {"steps": run.pos.step, "epochs": run.opts.epochs, "examples": data.num_train,
            "held_out": int(len(data.held_out)), "seq_len": data.seq_len, "final_loss": last.get("loss"),
            "final_eval_loss": last.get("eval_loss"), "seconds": round(seconds, 2), "world_size": run.d.world,
            "device": str(run.device), "precision": "bf16" if run.bf16 else "fp32",
            "tokens_per_s": round((run.pos.step - first_step) * tokens_per_step / seconds, 1) if seconds else None,
            "resumed_from_step": None if run.resumed_from is None else int(run.resumed_from.name.split("-")[1]),
            "store_identity": run.record.store_identity, **_held_out_summary(last), **_cross_summary(run, data)}


def _held_out_summary(last: dict) -> dict:
    """The final held-out evaluation in tokenizer-free units: the student's CE in nats per token
    and bits per byte over the held-out positions, with the tokens and bytes they cover."""
    if "eval_loss" not in last:
        return {}
    return {"held_out_nats_per_token": last["eval_nats_per_token"], "held_out_bits_per_byte": last["eval_bits_per_byte"],
            "held_out_tokens": last["eval_tokens"], "held_out_bytes": last["eval_bytes"]}


def _cross_summary(run, data) -> dict:
    """A cross-tokenizer run's loss and the examples it skipped (all ranks; an epoch's skips recur)."""
    from kdstream.distill import distributed

    cross = getattr(run.model.module if hasattr(run.model, "module") else run.model, "cross", None)
    if cross is None:
        return {}
    reasons = list(data.transform.skip_reasons)  # the same list on every rank: the sum is a collective
    counts = distributed.all_sum([float(run.skipped.get(r, 0)) for r in reasons], run.d)
    return {"cross_tokenizer": cross, "skipped_examples": {r: int(c) for r, c in zip(reasons, counts)}}


def _save(run, tokenizer, log, summary: dict) -> None:
    """Gather the final weights (every rank), then rank 0 saves the model and tokenizer, drops the
    checkpoints, writes the summary last and moves ``OUT.partial`` to ``OUT``."""
    from kdstream.distill import distributed
    from kdstream.distill.checkpoint import CHECKPOINTS, gather_state, save_model

    model_state, _ = gather_state(run.net, run.optimizer, run.opts.fsdp)
    if run.d.main:
        log.close()
        save_model(run.net, {k: v.detach().cpu() for k, v in model_state.items()}, run.partial)
        if run.opts.student_chat_template:  # the template it learned, so extract-eval renders prompts as it did
            tokenizer.chat_template = Path(run.opts.student_chat_template).read_text(encoding="utf-8")
        tokenizer.save_pretrained(str(run.partial))
        shutil.rmtree(run.partial / CHECKPOINTS, ignore_errors=True)
        (run.partial / DONE_FILE).write_text(json.dumps(summary, indent=2))
        publish(run.partial, Path(run.opts.out), "distill")
    distributed.barrier(run.d)
