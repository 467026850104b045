"""Cross-tokenizer alignment throughput (distill/align.py) in one process, as a loader worker runs it:
teacher tokens aligned per second on the demo corpus packed into examples of each --seq-lens
teacher tokens, for a byte-level BPE student of another vocabulary size and a SentencePiece-style
one. Beside it: the student tokenizer alone on the same text (the floor: alignment tokenizes each
example), called as ``tokenizer(text)`` per example and batched (``align.encode_texts``), and the
cost of the per-example targets (aligned_example with a top-k). ``align`` runs example by example;
``align_batch`` takes --batch rows at a time (the loader's batch) with one tokenizer call.

    python -m benchmarks.align_bench [--seq-lens 64 2048] [--batch 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.results import save
from kdstream.data.demo_corpus import demo_documents
from kdstream.data.examples import pack_examples
from kdstream.data.tokenizer import train_bpe_tokenizer, train_sentencepiece_style_tokenizer
from kdstream.distill.align import Aligner, Skip, encode_texts
from kdstream.distill.aligned_batch import aligned_example, map_repeats


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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
    results = [aligner.align(row) for row in examples]
    batched = [a for b in range(0, len(examples), batch) for a in aligner.align_batch(examples[b : b + batch])]
    same = all(type(x) is type(y) and (isinstance(x, Skip) or np.array_equal(x.student_ids, y.student_ids)
                                        and np.array_equal(x.byte_bounds, y.byte_bounds))
               for x, y in zip(results, batched))
    aligned = [r for r in results if not isinstance(r, Skip)]
    texts = [r.text for r in aligned]
    per_example_s = _best(lambda: [aligner.align(row) for row in examples], repeats)
    batch_s = _best(lambda: [aligner.align_batch(examples[b : b + batch]) for b in range(0, len(examples), batch)],
                    repeats)
    call_s = _best(lambda: [student(t, add_special_tokens=False) for t in texts], repeats)
    encode_s = _best(lambda: [encode_texts(student, texts[b : b + batch]) for b in range(0, len(texts), batch)],
                     repeats)
    merge = map_repeats(vmap)  # as CrossTargets calls it: no merge where the map cannot repeat an id
    target_s = _best(lambda: [aligned_example(a, target, topk_ids, topk_lp, vmap, merge=merge) for a in aligned],
                     repeats)
    merged_s = _best(lambda: [aligned_example(a, target, topk_ids, topk_lp, vmap) for a in aligned], repeats)
    return {
        "align_per_example_teacher_tokens_per_s": round(tokens / per_example_s),
        "align_batch_teacher_tokens_per_s": round(tokens / batch_s),
        "align_batch_plus_targets_teacher_tokens_per_s": round(tokens / (batch_s + target_s)),
        # the same with merge_repeated_ids always run (before map_repeats), for comparison in one run
        "align_batch_plus_targets_always_merged_teacher_tokens_per_s": round(tokens / (batch_s + merged_s)),
        "student_tokenizer_call_per_example_teacher_tokens_per_s": round(tokens / call_s),
        "student_tokenizer_encode_texts_batch_teacher_tokens_per_s": round(tokens / encode_s),
        "align_batch_equals_align": same,
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
    docs = demo_documents()
    figures: dict = {"documents": len(docs), "teacher_vocab": 8192, "batch": args.batch,
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
