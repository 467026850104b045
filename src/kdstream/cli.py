"""Command-line entry points. Each command parses flags into a typed options dataclass and calls
one library function; heavy imports (torch, vLLM) happen inside those functions so --help is fast.

Every command takes ``--config FILE.yaml`` (option names as keys); flags given on the command
line override it.
"""
from __future__ import annotations

import os
import re
import sys

import click

from kdstream.cli_analysis import ANALYSIS_COMMANDS
from kdstream.cli_common import config_option, print_summary
from kdstream.cli_eval import eval_group
from kdstream.cli_store import store
from kdstream.cli_study import STUDY_COMMANDS
from kdstream.errors import KdError


def engine_options(f):
    """vLLM engine flags shared by precompute-logits and extract-eval."""
    f = click.option("--enforce-eager/--no-enforce-eager", default=None,
                     help="Skip graph compilation (default: on for CPU, off for GPU).")(f)
    f = click.option("--max-num-batched-tokens", type=int, default=None,
                     help="Tokens per vLLM engine step (default: vLLM's).")(f)
    f = click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True)(f)
    f = click.option("--tensor-parallel-size", type=int, default=1, show_default=True)(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--dtype", default="auto", show_default=True, help="auto | float32 | bfloat16 | float16")(f)
    return f


def _engine(kw: dict):
    from kdstream.engines.vllm import EngineOptions

    return EngineOptions(
        dtype=kw.pop("dtype"), seed=kw.pop("seed"), tensor_parallel_size=kw.pop("tensor_parallel_size"),
        gpu_memory_utilization=kw.pop("gpu_memory_utilization"), enforce_eager=kw.pop("enforce_eager"),
        max_num_batched_tokens=kw.pop("max_num_batched_tokens"),
    )


@click.command("precompute-logits")
@config_option
@click.option("--model", required=True, help="Teacher: a HF model directory.")
@click.option("--dataset", required=True, help=".jsonl/.json/.parquet/.txt file, saved dataset dir, `demo`, or hub name.")
@click.option("--out", required=True, help="Store path or fsspec URL.")
@click.option("--top-k", type=int, default=64, show_default=True)
@click.option("--seq-len", type=int, default=256, show_default=True, help="Tokens per example.")
@click.option("--text-field", default="text", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--max-examples", type=int, default=None, help="Use only the first N examples.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Examples per engine call.")
@click.option("--tokenizer", default=None, help="Tokenizer directory (default: the model's).")
@click.option("--overwrite", is_flag=True, help="Start over, replacing an existing store (without it, an "
              "incomplete store started with the same options is resumed).")
@click.option("--chunk-rows", type=int, default=None, help="Examples per chunk (default: chunks of >= 1 MiB).")
@click.option("--num-workers", type=int, default=1, show_default=True,
              help="Parallel writers of one store, each a process with its own --worker-index.")
@click.option("--worker-index", type=int, default=0, show_default=True,
              help="This worker's share (0..N-1); with N > 1 run `kdstream store finalize OUT` after all of them.")
@click.option("--logprob-encoding", default="qdelta", show_default=True,
              help="qdelta: uint16 codes on a 1/52-nat log grid (decoded error <= 0.0096 nats) | fp32: exact.")
@click.option("--targets", default="topk", show_default=True,
              help="topk | sampled: store --samples draws per position (unique ids + counts) from the top-k + tail.")
@click.option("--samples", type=int, default=64, show_default=True, help="Draws per position with --targets sampled.")
@click.option("--backend", default="vllm", show_default=True,
              help="vllm | hf (transformers: for models vLLM cannot load, or without vLLM installed)")
@engine_options
def precompute_logits(**kw):
    """Run the teacher once (vLLM or transformers) and write its top-k next-token distributions to a Zarr store."""
    from kdstream.precompute import PrecomputeOptions, run_precompute

    engine = _engine(kw)
    print_summary(run_precompute(PrecomputeOptions(**kw, engine=engine)))


@click.command("distill")
@config_option
@click.option("--model", required=True, help="Student: HF dir (weights → fine-tune; config only → random init) or config .json.")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--logits-store", default=None, help="Teacher store (path or URL) to train from.")
@click.option("--dataset", default=None, help="Plain text to train on with --loss ce (e.g. the teacher).")
@click.option("--loss", default="forward_kl", show_default=True,
              help="ce | forward_kl | reverse_kl | jsd | ce_sampled (a sampled store: CE against its draws, no temperature)")
@click.option("--temperature", type=float, default=2.0, show_default=True)
@click.option("--alpha-ce", type=float, default=0.0, show_default=True, help="Weight of CE mixed into KD.")
@click.option("--tail", default="bucket", show_default=True, help="bucket | renormalize")
@click.option("--beta", type=float, default=0.5, show_default=True, help="JSD mixing weight.")
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=5e-5, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.03, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", default=None, help="Tokenizer directory (default: the model's).")
@click.option("--seq-len", type=int, default=256, show_default=True, help="With --dataset only.")
@click.option("--text-field", default="text", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--max-examples", type=int, default=None)
@click.option("--shuffle-block", type=int, default=64, show_default=True)
@click.option("--loss-chunk", default="auto", show_default=True,
              help="Positions per chunk of the fused output layer + loss (bounds the logits' memory); "
                   "auto = a chunk's fp32 logits within 64 MiB; 0 = plain full-logits path.")
@click.option("--exclude", default=None, help="File of example ids (one per line) to skip.")
@click.option("--checkpoint-every", type=int, default=None, help="Save a resumable checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest checkpoint in --out.")
@click.option("--overwrite", is_flag=True)
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Micro-batches per optimizer step (per rank): less memory, same update.")
@click.option("--precision", default="auto", show_default=True,
              help="auto (bf16 autocast on a CUDA device that supports it, else fp32) | fp32 | bf16")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--fsdp", is_flag=True, help="Under torchrun: shard weights, gradients and optimizer state (FSDP2).")
@click.option("--eval-examples", type=int, default=0, show_default=True,
              help="Hold out the last N (non-excluded) examples and report their loss.")
@click.option("--eval-every", type=int, default=None, help="Held-out eval every N steps (default: at the end).")
@click.option("--loader-workers", type=int, default=0, show_default=True,
              help="DataLoader processes reading the store (0: a background thread).")
@click.option("--prefetch", type=int, default=2, show_default=True, help="Batches read ahead (per worker).")
@click.option("--verify-store/--no-verify-store", default=True, show_default=True,
              help="Decode every chunk before step 0 so a corrupt store stops the run at once.")
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
              help="Also write TensorBoard events (when tensorboard is installed).")
def distill(**kw):
    """Train a student from a teacher's logit store with a KL-family loss (or CE)."""
    from kdstream.distill import DistillOptions, train
    from kdstream.distill.trainer import parse_loss_chunk

    kw["loss_chunk"] = parse_loss_chunk(kw["loss_chunk"])
    summary = train(DistillOptions(**kw))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line, from rank 0
        print_summary(summary)


@click.command("extract-eval")
@config_option
@click.option("--model", default=None, help="Model directory to evaluate (not needed by --method store).")
@click.option("--out", required=True, help="Directory for results.parquet, prefix_sweep.parquet and summary.json.")
@click.option("--logits-store", default=None, help="Take the examples from this store.")
@click.option("--dataset", default=None, help="Or from a corpus, tokenized like the store.")
@click.option("--method", default="generate", show_default=True,
              help="generate (greedy decoding) | fast (one teacher-forced pass, same exact-match verdict) | "
                   "both (and report disagreements) | store (teacher's verdict from --logits-store, no model)")
@click.option("--backend", default="vllm", show_default=True, help="vllm | hf (transformers, for models vLLM cannot load)")
@click.option("--prefix-len", default="50", show_default=True,
              help="Prefix tokens; a comma list (32,48) sweeps several, the first is primary.")
@click.option("--suffix-len", type=int, default=50, show_default=True,
              help="Suffix tokens, right after the prefix (a longer prefix shifts the suffix).")
@click.option("--offset", type=int, default=0, show_default=True, help="Where the prefix starts.")
@click.option("--seq-len", type=int, default=256, show_default=True, help="With --dataset only.")
@click.option("--text-field", default="text", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--max-examples", type=int, default=None)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--num-workers", type=int, default=1, show_default=True, help="Shard the examples over N workers.")
@click.option("--worker-index", type=int, default=0, show_default=True,
              help="This worker's share (0..N-1); join the shards with `kdstream eval merge`.")
@click.option("--overwrite", is_flag=True)
@click.option("--features", is_flag=True,
              help="Also score the model against --logits-store (ppl, suffix ppl, Min-K%, KL to the teacher, zlib) "
                   "into OUT/features/, as `kdstream features` does.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the HF model runs (--backend hf, --features): auto = CUDA when available.")
@engine_options
def extract_eval(**kw):
    """Prefix → suffix extraction (greedy, teacher-forced, or from the store); writes
    results.parquet, prefix_sweep.parquet and summary.json."""
    from kdstream.extract import ExtractOptions, run_extract_eval

    engine = _engine(kw)
    opts = ExtractOptions(**kw, engine=engine)
    after = None
    if opts.features:  # a composition here: extraction itself imports no analysis
        from kdstream.analysis.features_run import features_after_extract

        after = features_after_extract(opts)
    print_summary(run_extract_eval(opts, after=after))


@click.group()
@click.version_option(package_name="kdstream")
def kdstream():
    """kdstream: offline distillation from a shareable logit store, with memorization analysis."""


for _cmd in (precompute_logits, distill, extract_eval, store, eval_group, *ANALYSIS_COMMANDS, *STUDY_COMMANDS):
    kdstream.add_command(_cmd)


def _run(command: click.Command) -> None:
    try:
        command.main(standalone_mode=False)
    except KdError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # disk full, read-only or forbidden output location: the user's to fix
        known = _io_error(exc)
        if known is None:
            raise
        click.echo(f"error: {known}", err=True)
        sys.exit(2)


# How libraries that do their own I/O report a failed write: Rust (tokenizers) "... (os error 28)",
# Arrow "... [errno 28] ...", and the C++ iostream failure of a tokenizer save ("basic_ios::clear").
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def _io_error(exc: BaseException) -> KdError | None:
    """One line for an OS error the user fixes themselves (disk full, read-only, forbidden), found
    in ``exc``, in the exceptions it wraps (zarr, pyarrow, a worker process) or in a library's
    message that carries only the text; None for anything else (a bug: keep the traceback)."""
    from kdstream.outputs import disk_error

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        known = disk_error(exc) if isinstance(exc, OSError) else None
        match = _ERRNO_IN_TEXT.search(str(exc))
        if known is None and match:
            known = disk_error(OSError(int(match.group(1) or match.group(2)), str(exc)))
        if known is None and "basic_ios::clear" in str(exc):
            known = KdError("cannot write: a library's file write failed (basic_ios::clear), usually because the "
                            "disk is full or read-only: free space or choose another --out")
        if known is not None:
            return known
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    _run(kdstream)


def precompute_logits_main() -> None:
    _run(precompute_logits)


def distill_main() -> None:
    _run(distill)


def extract_eval_main() -> None:
    _run(extract_eval)


if __name__ == "__main__":
    main()
