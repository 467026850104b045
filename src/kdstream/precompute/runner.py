"""precompute-logits: corpus → examples → teacher (vLLM or HF) → Zarr store, marked complete last."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from kdstream.engines.vllm import EngineOptions
from kdstream.errors import KdError
from kdstream.options import check_device, check_shard, corpus_option, device_option, option, options_dict, require
from kdstream.precompute.backends import BACKENDS, Teacher, context_needed, engine_attrs, make_teacher
from kdstream.precompute.generate import GenerateOptions
from kdstream.text.chat import ChatOptions


@dataclass(frozen=True)
class PrecomputeOptions:
    """Run the teacher once over a corpus and store its top-k next-token distributions."""

    model: str = option(help="Teacher: a HF model directory.")
    dataset: str = option(help=".jsonl/.json/.parquet/.txt file, saved dataset dir, `demo`, or hub name.")
    out: str = option(help="Store path or fsspec URL (s3://bucket/store.zarr).")
    top_k: int = option(64, "Most probable next tokens stored per position (with --top-p / --budget: at most).")
    # ragged stores (storage/selection.py): a prefix of each row's top-k, its length per row
    top_p: float | None = option(None, "Keep per position the smallest prefix of the top-k whose mass reaches P "
                                       "(0 < P <= 1; at least --min-k, at most --top-k entries).")
    budget: float | None = option(None, "Keep on average B entries per position, given within each chunk to its "
                                        "largest probabilities across positions (each row --min-k..--top-k).")
    min_k: int = option(1, "Fewest entries a row keeps with --top-p / --budget.")
    seq_len: int = option(256, "Tokens per example.")
    text_field: str = corpus_option("text_field")
    split: str = corpus_option("split")
    max_examples: int | None = option(None, "Use only the first N examples.")
    # large batches keep the engine busy
    batch_size: int = option(64, "Examples per engine call.")
    tokenizer: str | None = option(None, "Tokenizer directory (default: the model's).")
    overwrite: bool = option(False, "Start over, replacing an existing store (without it, an incomplete store "
                                    "started with the same options is resumed).")
    # default: schema.default_chunk_rows
    chunk_rows: int | None = option(None, "Examples per chunk (default: chunks of >= 1 MiB).")
    num_workers: int = option(1, "Parallel writers of one store, each a process with its own --worker-index.")
    worker_index: int = option(0, "This worker's share (0..N-1); with N > 1 run `kdstream store finalize OUT` "
                                  "after all of them.")
    # the error bound is derived in storage/encoding.py
    logprob_encoding: str = option("qdelta", "qdelta: uint16 codes on a 1/52-nat log grid (decoded error <= "
                                             "0.0096 nats) | fp32: exact.")
    targets: str = option("topk", "topk | sampled: store --samples draws per position (unique ids + counts) "
                                  "from the top-k + tail.")
    # one flag, two counts: draws per position (--targets sampled) or responses per prompt (--generate)
    samples: int | None = option(None, "Draws per position with --targets sampled (default 64); responses per "
                                       "prompt with --generate (default 1).")
    backend: str = option("vllm", "vllm | hf (transformers: for models vLLM cannot load, or without vLLM installed)")
    device: str = device_option("--backend hf runs the teacher (vLLM places the model itself)")
    engine: EngineOptions = field(default_factory=EngineOptions)
    chat: ChatOptions = field(default_factory=ChatOptions)
    generation: GenerateOptions = field(default_factory=GenerateOptions)

    def __post_init__(self) -> None:
        gen = self.generation.generate
        if self.samples is None:  # resolved here: the options attribute records the count used
            object.__setattr__(self, "samples", 1 if gen else 64)
        if gen:
            require(self.samples >= 1, f"--samples {self.samples} must be at least 1 (responses per prompt)")
            require(self.backend == "vllm", "--generate runs on vLLM (its sampler returns each generated token's "
                                            "top-k): drop --backend hf")
            require(self.targets == "topk", "--generate stores top-k rows: drop --targets sampled")
            require(self.chat.format != "text" and self.chat.train_on is None and self.chat.on_long == "truncate",
                    "--format text, --train-on and --on-long are for scoring datasets: with --generate the rows "
                    "are prompts and the targets are the teacher's response tokens; drop them")
            require(self.generation.temperature > 0 or self.samples == 1,
                    f"--temperature 0 is greedy: its --samples {self.samples} responses would all be the same; "
                    "use --samples 1 or a temperature above 0")
        require(self.top_k >= 1, f"--top-k {self.top_k} must be at least 1")
        require(self.top_p is None or 0.0 < self.top_p <= 1.0, f"--top-p {self.top_p} is outside (0, 1]: "
                "pass a probability mass such as 0.95")
        require(self.top_p is None or self.budget is None,
                "--top-p and --budget are two ways to choose each row's entries: pass one of them")
        require(self.budget is None or self.budget <= self.top_k,
                f"--budget {self.budget} is above --top-k {self.top_k} (the most a row can hold): "
                f"use --budget <= {self.top_k}, or raise --top-k")
        require(1 <= self.min_k <= self.top_k, f"--min-k {self.min_k} must be in 1..--top-k ({self.top_k})")
        require(self.budget is None or self.budget >= self.min_k,
                f"--budget {self.budget} is below --min-k {self.min_k} (every row keeps that many): "
                f"use --budget >= {self.min_k}")
        require(self.min_k == 1 or self.top_p is not None or self.budget is not None,
                "--min-k is for --top-p / --budget (a fixed top-k store keeps --top-k entries per row): drop it")
        require(self.targets == "topk" or (self.top_p is None and self.budget is None),
                "--top-p / --budget choose entries of a top-k store: drop them with --targets sampled")
        require(self.seq_len >= 2, f"--seq-len {self.seq_len} must be at least 2")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1")
        require(self.max_examples is None or self.max_examples >= 1, "--max-examples must be at least 1")
        require(self.logprob_encoding in ("qdelta", "fp32"),
                f"--logprob-encoding {self.logprob_encoding!r} is not one of qdelta, fp32")
        require(self.backend in BACKENDS, f"--backend {self.backend!r} is not one of {' | '.join(BACKENDS)}")
        check_device(self.device)
        require(self.device == "auto" or self.backend == "hf",
                f"--device {self.device} is for --backend hf: vLLM places the model itself (drop --device)")
        require(self.backend == "vllm" or (self.engine.max_num_batched_tokens is None
                                           and self.engine.tensor_parallel_size == 1),
                "--max-num-batched-tokens and --tensor-parallel-size are vLLM engine flags: drop them with --backend hf")
        require(self.targets in ("topk", "sampled"), f"--targets {self.targets!r} is not one of topk, sampled")
        require(gen or 1 <= self.samples <= 255, f"--samples {self.samples} must be in 1..255 (counts are stored "
                                                  "as uint8)")
        require(self.chunk_rows is None or self.chunk_rows >= 1, f"--chunk-rows {self.chunk_rows} must be at least 1")
        check_shard(self.num_workers, self.worker_index)
        require(not (self.overwrite and self.num_workers > 1),
                "--overwrite with --num-workers > 1 would let each worker wipe the others' chunks: "
                "delete the store once, then start the workers without --overwrite")


def run_precompute(opts: PrecomputeOptions, teacher: Teacher | None = None) -> dict:
    """Write the store; returns a summary (examples, tokens, seconds, tokens/s, bytes/token).

    ``teacher``: one already loaded by ``make_teacher`` for the same model, backend, top-k and
    dtype, to write several stores without reloading it (default: loaded here, if work is left).
    """
    from kdstream.model_files import check_model_dir, check_tokenizer_fits, model_config, model_fingerprint
    from kdstream.storage import StoreWriter, tokenizer_files
    from kdstream.storage.lock import WorkerLock
    from kdstream.storage.writer import check_store_target
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    if teacher is not None and (teacher.name != opts.backend or teacher.k != opts.top_k):
        raise KdError(f"the loaded teacher ({teacher.name}, top-k {teacher.k}) does not match --backend "
                      f"{opts.backend} --top-k {opts.top_k}")
    model_dir = check_model_dir(opts.model, "teacher")
    check_store_target(opts.out, opts.overwrite)  # before the long work: hashing the weights, the corpus
    config = model_config(model_dir)
    vocab_size = int(config.get("vocab_size", 0))
    if opts.top_k > vocab_size:
        raise KdError(f"--top-k {opts.top_k} exceeds the teacher's vocabulary ({vocab_size}): use --top-k <= {vocab_size}")
    max_pos = config.get("max_position_embeddings")
    generate = opts.generation.generate
    # vLLM scores a prompt of L tokens as a request for L + 1 (one token must be generated); HF needs L.
    needed = context_needed(opts.backend, opts.seq_len)
    if max_pos and needed > max_pos and not generate:  # --generate: the prompts and --max-new-tokens say
        raise KdError(f"--seq-len {opts.seq_len} needs a context of {needed} on --backend {opts.backend} but the "
                      f"teacher has {max_pos}: use --seq-len <= {max_pos - (needed - opts.seq_len)}")
    tokenizer = load_tokenizer(opts.tokenizer or model_dir)
    check_tokenizer_fits(model_dir, "teacher", tokenizer, vocab_size)
    fingerprint = tokenizer_fingerprint(tokenizer)
    # the store carries the tokenizer's files, when they load alone to this very tokenizer
    tok_files, why_not = tokenizer_files.collect(opts.tokenizer or model_dir, fingerprint["sha256"])
    if why_not:
        print(f"note: the store will not carry its tokenizer ({why_not}); its users pass the teacher's tokenizer "
              "directory (distill --teacher-tokenizer DIR)", file=sys.stderr)
    generation = None
    if generate:
        from kdstream.precompute.generate import prompt_examples

        examples, corpus_attrs, conversations, generation = prompt_examples(opts, tokenizer, model_dir, max_pos)
    else:
        examples, corpus_attrs, conversations = _examples(opts, tokenizer)

    sampled = opts.targets == "sampled"
    # sampled: at most min(N, k) distinct ids per position can be drawn: the stored width
    width = min(opts.samples, opts.top_k) if sampled else opts.top_k
    selection = store_selection(opts)
    # the same for every worker; a fixed store's options leave the selection flags out (the
    # selection attribute records --top-p / --budget / --min-k where they are used)
    options = {k: v for k, v in options_dict(opts).items()
               if k != "worker_index" and (selection is not None or k not in _SELECTION_OPTIONS)
               and (conversations is not None or k != "chat")  # a text store records no chat options
               and (generate or k != "generation")}
    # One run per share of the store at a time: the mark is taken once the group exists, before
    # anything is written into it (claim), and removed at the end whatever happens (a failed run's
    # store stays resumable).
    lock = WorkerLock(opts.out, opts.worker_index, opts.num_workers)
    try:
        writer = StoreWriter(
            opts.out,
            num_examples=len(examples),
            seq_len=examples.seq_len if generate else opts.seq_len,
            k=width,
            vocab_size=vocab_size,
            chunk_rows=opts.chunk_rows,
            overwrite=opts.overwrite,
            encoding="sampled" if sampled else opts.logprob_encoding,
            samples=opts.samples if sampled else None,
            sample_seed=opts.engine.seed,
            selection=selection,
            tokenizer_files=tok_files,
            conversations=conversations,
            generation=generation,
            attrs={
                "targets": opts.targets,
                "source_top_k": opts.top_k,
                "teacher": model_fingerprint(model_dir),
                "tokenizer": fingerprint,
                "corpus": corpus_attrs,
                "engine": engine_attrs(opts.backend, model_dir, opts),
                "options": options | {"engine": options_dict(opts.engine)},
            },
            claim=lock.acquire,
        )
        return _write_store(opts, writer, examples, model_dir, teacher, lock)
    finally:
        lock.release()


def _write_store(opts: PrecomputeOptions, writer, examples, model_dir, teacher: Teacher | None, lock) -> dict:
    """Score and write this worker's chunks not yet written; finalize when it is the only worker."""
    from kdstream.precompute.generate import generate_rows
    from kdstream.progress import progress
    from kdstream.storage import tokenizer_files
    from kdstream.storage.background import BackgroundWriter
    from kdstream.storage.chunks import chunks_per_group, owned_groups
    from kdstream.storage.reader import disk_bytes

    generation = writer.attrs.get("generation") if opts.generation.generate else None
    writer.refresh_resumed()  # now that no other run writes this share
    rows_of = writer.rows_of

    # Plan: this worker's groups of chunks, minus those an earlier run wrote whole.
    plan = owned_groups(writer.num_chunks, chunks_per_group(opts.batch_size, writer.chunk_rows),
                        opts.num_workers, opts.worker_index)
    todo = [g for g in plan if not set(g) <= writer.resumed]
    # tokens scored, or with --generate the most that can be generated
    per_example = opts.generation.max_new_tokens if generation else opts.seq_len
    planned_tokens, todo_tokens = (sum(_len(rows_of(g)) for g in groups) * per_example for groups in (plan, todo))
    if teacher is None and todo:  # a fully resumed run loads no model
        # --generate: room for the longest prompt and response, and to score them again (L + 1)
        context = examples.engine_context if generation else None
        teacher = make_teacher(opts.backend, model_dir, opts, context)
    if teacher is not None:
        check_teacher_dtype(teacher, writer.attrs["engine"])

    start = time.perf_counter()
    generated = 0  # --generate: response tokens written by this run, and its responses by finish reason
    finished = np.zeros(len((generation or {}).get("finish_reasons", ())), dtype=np.int64)
    bar = progress(planned_tokens, "precompute", unit="tok", initial=planned_tokens - todo_tokens)
    # depth 1: the teacher scores group g+1 while group g is written; at most one more waits.
    with bar, BackgroundWriter(depth=1) as background:
        for chunks in todo:
            rows = (generate_rows(teacher, examples, rows_of(chunks), opts.batch_size, generation, bar) if generation
                    else _score_rows(teacher, examples, rows_of(chunks), opts.batch_size, bar))
            if generation:
                generated += int(rows["target_mask"].sum())
                finished += np.bincount(rows["finish_reason"], minlength=len(finished))
            lock.check()  # this run stalled and another took its share over: write nothing more
            background.submit(writer.write_chunks, chunks, rows)  # encoded and written in the background
    seconds = time.perf_counter() - start
    summary = {
        "store": opts.out,
        "examples": len(examples),
        "tokens": generated if generation else todo_tokens,  # scored (--generate: written) by this run
        "seconds": round(seconds, 3),
        "tokens_per_s": round((generated if generation else todo_tokens) / seconds, 1) if todo_tokens and seconds
        else None,
        # the background writer's time (encode + Zarr writes) and what of it the teacher waited for
        "write_seconds": round(background.busy_s, 3),
        "write_wait_seconds": round(background.wait_s, 3),
        "chunks_written": sum(1 for g in todo for c in g if c not in writer.resumed),
        "chunks_resumed": sum(1 for g in plan for c in g if c in writer.resumed),
        "worker_index": opts.worker_index,
        "num_workers": opts.num_workers,
        **({"finish_reasons": dict(zip(generation["finish_reasons"], finished.tolist()))} if generation else {}),
    }
    if opts.num_workers > 1:  # the other workers may still be writing: `store finalize` checks and marks
        return summary | {"complete": False, "bytes_per_token": None,
                          "next": f"kdstream store finalize {opts.out} (once all {opts.num_workers} workers finished)"}
    writer.finalize({"precompute_seconds": round(seconds, 3)})
    # per token: the store's arrays, not the tokenizer files it carries (the same few MB whatever its size)
    data_bytes = disk_bytes(opts.out) - tokenizer_files.disk_bytes(opts.out)
    if writer.conversations is not None:  # conversations: real tokens, and the positions that hold rows
        import zarr

        from kdstream.storage.schema import token_counts

        # a generated store's counts are written at finalize
        tokens, positions = token_counts(dict(zarr.open_group(opts.out, mode="r").attrs))
        return summary | {"complete": True, "real_tokens": tokens, "target_positions": positions,
                          "bytes_per_token": round(data_bytes / tokens, 1),
                          "bytes_per_target_position": round(data_bytes / positions, 1)}
    return summary | {"complete": True, "bytes_per_token": round(data_bytes / (len(examples) * opts.seq_len), 1)}


def _examples(opts: PrecomputeOptions, tokenizer):
    """(examples, the store's corpus attribute, its conversations attribute or None for text)."""
    from kdstream.data.dataset_examples import dataset_examples

    sampled = ("--targets sampled is for text datasets: a conversation store keeps top-k rows at its target "
               "positions; drop --targets sampled (or pass --format text)")
    return dataset_examples(opts.dataset, opts.text_field, opts.split, opts.seq_len, opts.max_examples, opts.chat,
                            tokenizer, refuse_chat=sampled if opts.targets == "sampled" else None)


_SELECTION_OPTIONS = ("top_p", "budget", "min_k")


def store_selection(opts: PrecomputeOptions) -> dict | None:
    """The ``selection`` attribute of a ragged store (storage/selection.py); None for fixed top-k."""
    from kdstream.storage import selection

    if opts.top_p is not None:
        return selection.describe("top_p", opts.top_k, opts.min_k, p=opts.top_p)
    if opts.budget is not None:
        return selection.describe("budget", opts.top_k, opts.min_k, budget=opts.budget)
    return None


def check_teacher_dtype(teacher: Teacher, engine: dict) -> None:
    """The loaded teacher must run in the dtype the store records (resolved before loading, by the
    backend's rule: see backends.engine_attrs): otherwise its rows would be mislabelled."""
    actual = getattr(teacher, "dtype", None)
    if actual is not None and actual != engine.get("dtype"):
        raise KdError(f"the teacher runs in {actual} but the store records engine.dtype {engine.get('dtype')} "
                      f"(--dtype {engine.get('requested_dtype')}): pass --dtype {actual} explicitly, or load the "
                      "teacher with the store's dtype")


def _score_rows(teacher, examples, rows: slice, batch_size: int, bar) -> dict[str, np.ndarray]:
    """Teacher arrays + input_ids, example_id, doc_index for ``rows`` (one group of chunks).

    Engine calls of ``batch_size`` rows from the group's first row: the same batches whichever
    chunk a run resumed from and however many workers share the store, hence the same values.
    """
    scored = []
    lengths = getattr(examples, "length", None)  # conversations: score each one's tokens only
    for b in range(rows.start, rows.stop, batch_size):
        input_ids = examples.input_ids[b : min(b + batch_size, rows.stop)]  # (B, L)
        scored.append(teacher.score(input_ids) if lengths is None else
                      teacher.score(input_ids, lengths[b : min(b + batch_size, rows.stop)]))
        bar.update(input_ids.size)
    out = {key: np.concatenate([s[key] for s in scored]) for key in scored[0]}  # (G·R, L-1, …)
    out.update(input_ids=examples.input_ids[rows], example_id=examples.example_id[rows],
               doc_index=examples.doc_index[rows])
    if lengths is not None:  # conversations: real lengths, and the rows the loss is on
        out.update(length=examples.length[rows], target_mask=examples.target_mask[rows])
    return out


def _len(s: slice) -> int:
    return s.stop - s.start
