"""Hand-built analysis directories shared by the tests of tests/analysis (the fixtures that use
them are in conftest.py): extract-eval, features and study directories without running a model."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SEQ = 32
EXAMPLES = 24
CHUNK = 8  # store rows per chunk: 3 chunks


def write_eval(d, ids, memorized):
    d.mkdir(parents=True)
    ids = np.asarray(ids, dtype=np.int64)
    exact = np.isin(ids, list(memorized))
    pq.write_table(pa.table({"example_id": ids, "exact_match": exact, "frac_matched": exact.astype(float)}),
                   d / "results.parquet")
    (d / "summary.json").write_text(json.dumps({"examples": len(ids), "memorized": int(exact.sum())}))
    return d



def synthetic_dirs(root, n_pos=30, n_neg=170, seed=0):
    """Features dirs and a student eval where memorized examples have low zlib entropy and ppl.
    Rows are stored in a different order in each file (joined by example_id)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_pos + n_neg) + 500
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    noise = rng.normal(size=(len(ids), 4))
    t_ppl = np.exp(1.5 + 0.3 * noise[:, 0] - 1.0 * y)
    b_ppl = np.exp(2.5 + 0.3 * noise[:, 1] - 1.0 * y)
    kl = 0.5 + 0.1 * np.abs(noise[:, 2])
    zlib = 300 + 20 * noise[:, 3] - 50 * y

    def features_dir(name, ppl):
        d = root / name
        d.mkdir(parents=True)
        order = rng.permutation(len(ids))
        pq.write_table(pa.table({"example_id": ids[order], "ppl": ppl[order], "teacher_kl": kl[order],
                                 "zlib_entropy": zlib[order].round().astype(np.int64)}), d / "features.parquet")
        (d / "summary.json").write_text("{}")
        return d

    teacher, baseline = features_dir("tf", t_ppl), features_dir("bf", b_ppl)
    order = rng.permutation(len(ids))
    student = write_eval(root / "se", ids[order], set(ids[y].tolist()))
    return student, teacher, baseline, set(ids[y].tolist())



def study_eval(d, ids, memorized, prefix_len=16, by_prefix_len=None):
    """An extract-eval directory as extract-eval writes it: results + summary with prefix_len."""
    write_eval(d, ids, memorized)
    n, m = len(ids), len(set(memorized))
    summary = {"examples": n, "memorized": m, "rate": m / n, "prefix_len": prefix_len, "suffix_len": 16}
    if by_prefix_len is not None:
        summary["by_prefix_len"] = by_prefix_len
    (d / "summary.json").write_text(json.dumps(summary))
    return d


