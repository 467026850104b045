"""The study with a student tokenizer other than the teacher's (StudyConfig.student_tokenizer).

The baseline, the student and the filtered student start from an init directory with that
tokenizer and its vocabulary size; the teacher, its store and the examples stay in the teacher's
tokens. What changes in the protocol (protocol.py, ``cross`` true):

- baseline: ``distill --loss ce`` trains on the student's own tokens of the store's texts
  (distill's CE-only cross-tokenizer mode), the student KD across tokenizers
  (``--cross-tokenizer``, StudyConfig.cross_tokenizer, default auto = alm+exact);
- extract-eval of those models: the prefix is cut in the teacher's tokens, re-tokenized, and the
  verdict is on the suffix's bytes (greedy decoding: ``--method generate``; canaries the same,
  packed with the teacher's tokenizer);
- the baseline's features are scored across tokenizers (`kdstream features`, features_cross.py)
  and the classifier reads byte-based features (bits per byte, the teacher–baseline log-likelihood
  ratio per byte, zlib) instead of per-token perplexities and the top-k KL.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from kdstream.errors import KdError

DIR = "student_tokenizer"  # OUT/student_tokenizer/: a tokenizer trained on the corpus
_TRAINED = re.compile(r"^(sentencepiece|bpe)-(\d+)$")


def check_spec(spec: str | None, student_model: str, tiny: bool) -> None:
    """One-line refusal of a student_tokenizer the study cannot use."""
    if spec is None:
        return
    if not tiny:
        raise KdError(f"student_tokenizer {spec} needs a tiny student (student_model {student_model} brings its own "
                      "embeddings and tokenizer: a student of another tokenizer is simply another student_model)")
    m = _TRAINED.match(spec)
    if m is None and not Path(spec).is_dir():
        raise KdError(f"student_tokenizer {spec!r} is neither sentencepiece-N, bpe-N (trained on the corpus) nor a "
                      "tokenizer directory: pass e.g. sentencepiece-2048")
    if m is not None and int(m.group(2)) < 300:
        raise KdError(f"student_tokenizer {spec}: a vocabulary of {m.group(2)} is too small (the byte-level bases "
                      "take 256 or more): pass at least 300")


def student_tokenizer(spec: str, out: Path, texts):
    """The tokenizer named by ``spec``: a directory, or sentencepiece-N / bpe-N trained on the
    corpus once and saved under OUT/student_tokenizer/ (reused on a rerun)."""
    from kdstream.text.tokenizers import load_tokenizer, train_bpe_tokenizer, train_sentencepiece_style_tokenizer

    m = _TRAINED.match(spec)
    if m is None:
        return load_tokenizer(spec)
    saved = out / DIR
    if (saved / "tokenizer.json").exists():
        return load_tokenizer(saved)
    kind, vocab = m.group(1), int(m.group(2))
    print(f"[study] training the student's {kind} tokenizer ({vocab}) on the corpus", file=sys.stderr)
    # a fresh directory renamed at the end: a failed save never looks finished to a rerun
    partial = Path(tempfile.mkdtemp(prefix=f"{DIR}.partial-", dir=out))
    if kind == "bpe":
        train_bpe_tokenizer(texts(), vocab, partial)
    else:
        train_sentencepiece_style_tokenizer(texts(), vocab).save_pretrained(str(partial))
    partial.rename(saved)
    return load_tokenizer(saved)


def tokenizers_differ(teacher_dir: str, student_dir: str) -> bool:
    """Whether the student starts with another tokenizer than the teacher's (fingerprints)."""
    from kdstream.text.match import tokenizers_match
    from kdstream.text.tokenizers import load_tokenizer

    return not tokenizers_match(load_tokenizer(teacher_dir), load_tokenizer(student_dir))


def across_facts(seed_dir: Path, init: dict[str, str]) -> dict:
    """What the study report says about a seed run across tokenizers, read from its outputs: both
    vocabularies, the distill mode of each student-side model (train_summary's cross_tokenizer),
    how each evaluation was judged (summary mode / match_on) and the examples it could not judge."""
    import json

    from kdstream.analysis.files import SUMMARY_FILE
    from kdstream.text.tokenizers import load_tokenizer

    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    train = {r: read(seed_dir / r / "train_summary.json").get("cross_tokenizer")
             for r in ("baseline", "student", "student_filtered") if (seed_dir / r / "train_summary.json").exists()}
    evals = {}
    for role in ("teacher", "baseline", "student", "student_filtered"):
        s = read(seed_dir / "eval" / role / SUMMARY_FILE)
        if s:
            evals[role] = {"mode": s.get("mode"), "match_on": s.get("match_on"),
                           "skipped": sum((s.get("skipped_examples") or {}).values())}
    return {"teacher_vocab": len(load_tokenizer(init["teacher"])), "student_vocab": len(load_tokenizer(init["student"])),
            "distill": train, "eval": evals}
