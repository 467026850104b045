"""Cross-tokenizer alignment throughput (distill/align.py) in one process, as a loader worker runs it:
teacher tokens aligned per second on the demo corpus packed into examples of --seq-len teacher
tokens, for a byte-level BPE student of another vocabulary size and a SentencePiece-style one; next
to it, the student tokenizer alone on the same text (the floor: alignment tokenizes each example)
and the cost of the per-example targets (aligned_example with a top-k).

    python -m benchmarks.align_bench [--seq-len 2048] [--repeats 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from benchmarks.results import save
from kdstream.data.demo_corpus import demo_documents
from kdstream.data.examples import pack_examples
from kdstream.data.tokenizer import train_bpe_tokenizer, train_sentencepiece_style_tokenizer
from kdstream.distill.align import Aligner, Skip
from kdstream.distill.aligned_batch import aligned_example


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    docs = demo_documents()
    figures: dict = {"seq_len": args.seq_len, "documents": len(docs)}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train_bpe_tokenizer(docs, 8192, f"{tmp}/teacher")
        students = {"bpe_16384": train_bpe_tokenizer(docs, 16384, f"{tmp}/student"),
                    "sentencepiece_4096": train_sentencepiece_style_tokenizer(docs, 4096)}
        examples = pack_examples(docs, teacher, args.seq_len).input_ids  # (S, L)
        tokens = examples.size
        figures.update(teacher_vocab=8192, examples=int(examples.shape[0]), teacher_tokens=int(tokens))
        rng = np.random.default_rng(0)
        k = 32
        topk_ids = rng.integers(0, 8192, (args.seq_len - 1, k))
        topk_lp = np.sort(rng.normal(-8, 2, (args.seq_len - 1, k)).astype(np.float32), -1)[:, ::-1]
        target = rng.normal(-3, 1, args.seq_len - 1).astype(np.float32)
        for name, student in students.items():
            aligner = Aligner(teacher, student)
            vmap = aligner.vocab_map()
            results = [aligner.align(row) for row in examples]
            skipped = sum(isinstance(r, Skip) for r in results)
            aligned = [r for r in results if not isinstance(r, Skip)]
            texts = [r.text for r in aligned]
            align_s = _best(lambda: [aligner.align(row) for row in examples], args.repeats)
            tok_s = _best(lambda: [student(t, add_special_tokens=False) for t in texts], args.repeats)
            target_s = _best(lambda: [aligned_example(a, target, topk_ids, topk_lp, vmap) for a in aligned],
                             args.repeats)
            figures[name] = {
                "align_teacher_tokens_per_s": round(tokens / align_s),
                "student_tokenizer_alone_teacher_tokens_per_s": round(tokens / tok_s),
                "align_plus_targets_teacher_tokens_per_s": round(tokens / (align_s + target_s)),
                "skipped_examples": skipped,
                "chunks_per_teacher_token": round(sum(a.num_chunks for a in aligned) / tokens, 3),
                "usable_chunk_share": round(float(np.mean(np.concatenate([a.usable for a in aligned]))), 4),
                "student_tokens_per_teacher_token": round(sum(len(a.student_ids) for a in aligned) / tokens, 3),
                "teacher_ids_mapped_exactly": round(float(np.mean(vmap >= 0)), 4),
            }
    save("align_bench", figures)


if __name__ == "__main__":
    main()
