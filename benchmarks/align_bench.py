"""Cross-tokenizer alignment throughput (text/align.py) in one process, as a loader worker runs it:
teacher tokens aligned per second on the demo corpus packed into examples of each --seq-lens
teacher tokens, for a byte-level BPE student of another vocabulary size and a SentencePiece-style
one. Beside it: the student tokenizer alone on the same text (the floor: alignment tokenizes each
example), called as ``tokenizer(text)`` per example and batched (``align.encode_texts`` on each
batch's pieces of text between special tokens, as ``align_rows`` calls it), and the
cost of the targets with a top-k. ``align`` runs example by example; ``align_batch`` takes --batch
rows at a time (the loader's batch) with one tokenizer call; "plus targets" is the loader's path
(``CrossTargets``): ``align_rows`` and ``aligned_examples`` over each batch, checked equal to the
per-example ``align`` and ``aligned_example``. The student's ids come from a per-process word
cache where it is exact (text/word_cache.py: the byte-level BPE student; the SentencePiece-style
one goes to its tokenizer): "cold cache" is the first pass over the corpus from an empty cache,
the others the best of --repeats passes, the cache warm.

    python -m benchmarks.align_bench [--seq-lens 64 2048] [--batch 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from dataclasses import fields

import numpy as np

from benchmarks.results import save
from kdstream.data.demo_corpus import demo_documents
from kdstream.data.examples import pack_examples
from kdstream.distill.aligned_batch import AlignedExample, aligned_example, aligned_examples, map_repeats
from kdstream.storage.memory import keep_freed_memory
from kdstream.text.align import Aligner, Alignment, Skip, encode_texts
from kdstream.text.tokenizers import train_bpe_tokenizer, train_sentencepiece_style_tokenizer


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _same(x, y, kind) -> bool:
    """Whether two results (``kind`` dataclasses, or Skips) are identical, field by field."""
    if type(x) is not type(y):
        return False
    if not isinstance(x, kind):
        return x == y
    return all(a == b if isinstance(a, str) else a.dtype == b.dtype and np.array_equal(a, b)
               for a, b in ((getattr(x, f.name), getattr(y, f.name)) for f in fields(kind)))


def _targets(aligned, store: list[np.ndarray], vmap: np.ndarray, merge: bool) -> list:
    """The batch's targets as CrossTargets builds them; store: the batch's (B, ...) arrays (the first B rows)."""
    n = len(aligned.results)
    return aligned_examples(aligned, *(x[:n] for x in store), vmap, merge=merge)


def _one(aligner: Aligner, student, examples: np.ndarray, batch: int, repeats: int) -> dict:
    """Rates in teacher tokens/s for one student tokenizer over (S, L) teacher ids."""
    tokens = examples.size
    seq_len = examples.shape[1]
    rng = np.random.default_rng(0)
    k = 32
    # k distinct ids per row, as a top-k has
    topk_ids = np.stack([rng.choice(len(aligner.t.tokens), k, replace=False) for _ in range(seq_len - 1)])
    topk_lp = np.sort(rng.normal(-8, 2, (seq_len - 1, k)).astype(np.float32), -1)[:, ::-1]
    target = rng.normal(-3, 1, seq_len - 1).astype(np.float32)
    vmap = aligner.vocab_map()
    merge = map_repeats(vmap)  # as CrossTargets calls it: no merge where the map cannot repeat an id
    # the store's arrays of a batch, as the loader hands them over: (B, L - 1) and (B, L - 1, k)
    store = [np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape))) for x in (target, topk_ids, topk_lp)]
    batches = [examples[b : b + batch] for b in range(0, len(examples), batch)]
    # the loader's path once over the corpus from an empty word cache, as a DataLoader worker
    # starts (its pickled copy of the Aligner): the first epoch's rate over text never seen
    fresh = pickle.loads(pickle.dumps(aligner))
    start = time.perf_counter()
    for rows in batches:
        _targets(fresh.align_rows(rows), store, vmap, merge)
    cold_s = time.perf_counter() - start
    results = [aligner.align(row) for row in examples]
    batched = [a for rows in batches for a in aligner.align_batch(rows)]
    same = all(_same(x, y, Alignment) for x, y in zip(results, batched))
    aligned = [r for r in results if not isinstance(r, Skip)]
    per_example = [aligned_example(a, target, topk_ids, topk_lp, vmap, merge=merge) for a in aligned]
    loader = [e for rows in batches for e in _targets(aligner.align_rows(rows), store, vmap, merge)]
    same_targets = len(per_example) == len(loader) and all(_same(x, y, AlignedExample)
                                                            for x, y in zip(per_example, loader))
    texts = [r.text for r in aligned]
    per_example_s = _best(lambda: [aligner.align(row) for row in examples], repeats)
    batch_s = _best(lambda: [aligner.align_batch(rows) for rows in batches], repeats)
    rows_s = _best(lambda: [aligner.align_rows(rows) for rows in batches], repeats)
    call_s = _best(lambda: [student(t, add_special_tokens=False) for t in texts], repeats)
    # what align_rows hands the student's side: each batch's text pieces (between special tokens)
    pieces = [aligner.piece_texts(rows) for rows in batches]
    encode_s = _best(lambda: [encode_texts(student, texts) for texts in pieces], repeats)
    cached_s = _best(lambda: [aligner.encoder.encode(texts) for texts in pieces], repeats)
    rows_of = [aligner.align_rows(rows) for rows in batches]
    target_s = _best(lambda: [_targets(r, store, vmap, merge) for r in rows_of], repeats)
    merged_s = _best(lambda: [_targets(r, store, vmap, True) for r in rows_of], repeats)
    return {
        "align_per_example_teacher_tokens_per_s": round(tokens / per_example_s),
        "align_batch_teacher_tokens_per_s": round(tokens / batch_s),
        # the loader's path: align_rows + aligned_examples per batch
        "align_batch_plus_targets_teacher_tokens_per_s": round(tokens / (rows_s + target_s)),
        # the same with merge_repeated_ids always run (before map_repeats), for comparison in one run
        "align_batch_plus_targets_always_merged_teacher_tokens_per_s": round(tokens / (rows_s + merged_s)),
        # the same, first pass over the corpus from an empty word cache (text/word_cache.py)
        "align_batch_plus_targets_cold_cache_teacher_tokens_per_s": round(tokens / cold_s),
        "student_tokenizer_call_per_example_teacher_tokens_per_s": round(tokens / call_s),
        "student_tokenizer_encode_texts_batch_teacher_tokens_per_s": round(tokens / encode_s),
        "student_word_cache_encode_batch_teacher_tokens_per_s": round(tokens / cached_s),
        "word_cache": aligner.encoder.why_not or f"used: {len(aligner.encoder.words)} words cached",
        "align_batch_equals_align": same,
        "batch_targets_equal_per_example_targets": same_targets,
        "skipped_examples": len(results) - len(aligned),
        "chunks_per_teacher_token": round(sum(a.num_chunks for a in aligned) / tokens, 3),
        "usable_chunk_share": round(float(np.mean(np.concatenate([a.usable for a in aligned]))), 4),
        "student_tokens_per_teacher_token": round(sum(len(a.student_ids) for a in aligned) / tokens, 3),
        "teacher_ids_mapped_exactly": round(float(np.mean(vmap >= 0)), 4),
        "targets_merge_repeated_ids": merge,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--batch", type=int, default=16, help="rows per align_batch call (the loader's batch)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # as in the loader's reading process (OpenStore calls it before CrossTargets runs): without it
    # glibc hands each batch's few-hundred-KB top-k gathers back to the kernel and faults them in again
    kept = keep_freed_memory()
    docs = demo_documents()
    figures: dict = {"documents": len(docs), "teacher_vocab": 8192, "batch": args.batch, "keep_freed_memory": kept,
                     "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                     "rayon_num_threads": os.environ.get("RAYON_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train_bpe_tokenizer(docs, 8192, f"{tmp}/teacher")
        students = {"bpe_16384": train_bpe_tokenizer(docs, 16384, f"{tmp}/student"),
                    "sentencepiece_4096": train_sentencepiece_style_tokenizer(docs, 4096)}
        for seq_len in args.seq_lens:
            examples = pack_examples(docs, teacher, seq_len).input_ids  # (S, L)
            row = {"examples": int(examples.shape[0]), "teacher_tokens": int(examples.size)}
            for name, student in students.items():
                row[name] = _one(Aligner(teacher, student), student, examples, args.batch, args.repeats)
            figures[f"seq_len_{seq_len}"] = row
    save("align_bench", figures)


if __name__ == "__main__":
    main()
