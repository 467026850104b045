"""Fidelity frontier of the store's selection rules on a real teacher: bytes per token against what
the stored rows capture, for fixed top-k, --top-p, --budget and sampled targets.

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2.py), fp32, over held-out real text that no
kdstream corpus holds: the Python language reference as the standard library ships it
(``pydoc_data.topics``), packed into --examples x --seq-len tokens. Every setting is written as a
real store by StoreWriter (the qdelta encoding, chunks as precompute writes them) and read back
with open_store, so the bytes are on-disk bytes and the rows are what a trainer reads. Per
setting:
- bytes/token: the store's size on disk over its tokens;
- uncaptured mass: 1 - the teacher's true probability of the ids a row lists, mean over positions;
- entries per position (mean, p90);
- grad cosine at T = 1 and T = 2: between the gradient w.r.t. a student's logits (the teacher's
  plus N(0, 2²) noise, as loss_fidelity_bench) of the store's loss (forward KL on the rows read
  back, bucket tail; sampled: ce_sampled at T = 1, forward KL on the sampled view at T = 2) and of
  the dense full-vocabulary forward KL.
Prints one JSON object, saves benchmarks/results/frontier_bench.json and a PNG beside it.

    python -m benchmarks.frontier_bench [--examples 12 --seq-len 256]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.results import RESULTS, save
from benchmarks.smollm2 import smollm2_dir
from kdstream.distill.losses import dense_kd_loss, kd_loss, sampled_ce_loss
from kdstream.storage import StoreWriter, open_store
from kdstream.storage import encoding as enc
from kdstream.storage import selection as sel
from kdstream.storage.reader import disk_bytes

CAP = 256  # --top-k of the ragged settings: the most one row may hold
SETTINGS = ([("top_k", k) for k in (8, 16, 32, 64, 128)] + [("top_p", p) for p in (0.9, 0.95, 0.99, 0.995, 0.999)]
            + [("budget", b) for b in (8, 16, 24, 32, 36, 40, 44, 48, 56, 64, 80, 96)]
            + [("sampled", n) for n in (16, 32, 64)])


def held_out_ids(tokenizer, examples: int, seq_len: int) -> np.ndarray:
    """(examples, seq_len) token ids of the language reference, packed as precompute packs text."""
    import pydoc_data.topics

    from kdstream.data import pack_examples

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    return pack_examples(texts, tokenizer, seq_len, examples).input_ids


def write_setting(root: Path, kind: str, value, ids: np.ndarray, logp: torch.Tensor) -> Path:
    """One store of the teacher's rows under this selection rule; returns its path."""
    n, length = ids.shape
    v = logp.shape[-1]
    k = int(value) if kind == "top_k" else CAP if kind in ("top_p", "budget") else 64
    top = logp.reshape(n, length, v)[:, :-1].topk(k, -1)  # (n, L-1, k) the teacher's most likely ids
    true_lp = logp.reshape(n, length, v)[:, :-1].gather(-1, torch.from_numpy(ids[:, 1:, None])).squeeze(-1)
    rank = (logp.reshape(n, length, v)[:, :-1] > true_lp[..., None]).sum(-1) + 1  # (n, L-1) 1-based
    rows = {"input_ids": ids, "example_id": np.arange(n), "doc_index": np.zeros(n, np.int64),
            "target_logprob": true_lp.numpy(), "target_rank": rank.numpy()}
    selection, encoding, samples = None, "qdelta", None
    if kind == "top_p":
        selection = sel.describe("top_p", CAP, 1, p=float(value))
    elif kind == "budget":
        selection = sel.describe("budget", CAP, 1, budget=float(value))
    if kind == "sampled":
        encoding, samples = "sampled", int(value)
        width = min(samples, k)
        drawn = enc.draw_samples(top.indices.numpy().reshape(-1, k), top.values.numpy().reshape(-1, k), samples, width,
                                 np.random.default_rng(0))
        rows.update({name: a.reshape(n, length - 1, *a.shape[1:]) for name, a in drawn.items()})
        k = width
    else:
        rows.update(topk_ids=top.indices.numpy(), topk_logprobs=top.values.numpy())
    out = root / f"{kind}-{value}.zarr"
    writer = StoreWriter(str(out), num_examples=n, seq_len=length, k=k, vocab_size=v, attrs={"targets": "sampled" if
                         kind == "sampled" else "topk"}, encoding=encoding, samples=samples, selection=selection)
    writer.append(rows)
    writer.finalize()
    return out


def measure(store: Path, kind: str, teacher: torch.Tensor, student: torch.Tensor) -> dict:
    """Bytes, captured mass, entries and gradient cosines of one written store (see the docstring)."""
    s = open_store(str(store))
    n, length = len(s), s.seq_len
    got = s.read(0, n, ("topk_ids", "topk_logprobs"))
    ids = torch.from_numpy(got["topk_ids"]).reshape(n * (length - 1), -1)  # (N, k) padded ids
    lp = torch.from_numpy(got["topk_logprobs"]).reshape(n * (length - 1), -1)  # (N, k), -inf unused
    listed = ~torch.isneginf(lp)
    true_p = torch.softmax(teacher, -1).gather(-1, ids) * listed  # (N, k) the teacher's own mass on them
    entries = listed.sum(-1).float()
    row = {"bytes_per_token": round(disk_bytes(str(store)) / (n * length), 2),
           "uncaptured_mass": round(float(1 - true_p.sum(-1).clamp(max=1).mean()), 4),
           "entries_mean": round(float(entries.mean()), 1), "entries_p90": round(float(entries.quantile(0.9)), 1)}
    for t in (1.0, 2.0):
        dense = dense_kd_loss(student, teacher, kind="forward_kl", temperature=t)
        if kind == "sampled" and t == 1.0:
            loss = sampled_ce_loss(student, ids, lp)
        else:
            loss = kd_loss(student, ids, lp, kind="forward_kl", temperature=t)
        g, g_dense = (torch.autograd.grad(x, student)[0].flatten() for x in (loss, dense))
        row[f"grad_cosine_T{int(t)}"] = round(float(F.cosine_similarity(g, g_dense, dim=0)), 4)
    return row


def _at_bytes(points: list[dict], x: float, key: str) -> float | None:
    """``key`` linearly interpolated at ``x`` bytes/token along ``points`` (one kind, sorted by bytes)."""
    xs = [r["bytes_per_token"] for r in points]
    if not xs or not xs[0] <= x <= xs[-1]:
        return None
    return round(float(np.interp(x, xs, [r[key] for r in points])), 4)


def targets(rows: list[dict]) -> dict:
    """Issue 17's two byte targets, read off the budget frontier (interpolated between settings):
    at <= 0.6x the bytes of fixed top-64, captured mass and gradient cosines >= top-64's; at the
    bytes of top-64, captured mass >= top-128's."""
    fixed = {r["value"]: r for r in rows if r["kind"] == "top_k"}
    budget = sorted((r for r in rows if r["kind"] == "budget"), key=lambda r: r["bytes_per_token"])
    top64, top128 = fixed[64], fixed[128]
    keys = ("uncaptured_mass", "grad_cosine_T1", "grad_cosine_T2")
    at06 = {key: _at_bytes(budget, 0.6 * top64["bytes_per_token"], key) for key in keys}
    at1 = _at_bytes(budget, top64["bytes_per_token"], "uncaptured_mass")
    # the cheapest budget point (interpolated) whose uncaptured mass is top-64's
    match = next((i for i, r in enumerate(budget) if r["uncaptured_mass"] <= top64["uncaptured_mass"]), None)
    cheapest = None
    if match:
        lo, hi = budget[match - 1], budget[match]
        f = (lo["uncaptured_mass"] - top64["uncaptured_mass"]) / (lo["uncaptured_mass"] - hi["uncaptured_mass"])
        cheapest = round((lo["bytes_per_token"] + f * (hi["bytes_per_token"] - lo["bytes_per_token"]))
                         / top64["bytes_per_token"], 3)
    return {
        "budget_at_0.6x_top64_bytes": {"bytes_per_token": round(0.6 * top64["bytes_per_token"], 2), **at06,
                                       "top64": {key: top64[key] for key in keys},
                                       "met": {key: at06[key] is not None and (at06[key] <= top64[key] if key ==
                                               "uncaptured_mass" else at06[key] >= top64[key]) for key in keys}},
        "budget_bytes_ratio_at_top64_mass": cheapest,
        "budget_at_top64_bytes": {"bytes_per_token": top64["bytes_per_token"], "uncaptured_mass": at1,
                                  "top128_uncaptured_mass": top128["uncaptured_mass"],
                                  "met": at1 is not None and at1 <= top128["uncaptured_mass"]},
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("top_k", "o"), ("top_p", "s"), ("budget", "^"), ("sampled", "x")):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["bytes_per_token"])
        xs = [r["bytes_per_token"] for r in mine]
        axes[0].plot(xs, [r["uncaptured_mass"] for r in mine], marker=marker, label=kind)
        axes[1].plot(xs, [r["grad_cosine_T2"] for r in mine], marker=marker, label=kind)
    axes[0].set(xlabel="bytes / token", ylabel="mean uncaptured mass", yscale="log")
    axes[1].set(xlabel="bytes / token", ylabel="grad cosine vs dense (T = 2)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M, held-out text: store bytes vs fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from transformers import AutoModelForCausalLM

    from kdstream.text.tokenizers import load_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=256)
    a = ap.parse_args()
    path = smollm2_dir()
    ids = held_out_ids(load_tokenizer(path), a.examples, a.seq_len)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.from_numpy(ids[i:i + 2])).logits for i in range(0, len(ids), 2)])
    v = logits.shape[-1]
    teacher = logits[:, :-1].reshape(-1, v)  # (N, V) the positions a store keeps
    logp = torch.log_softmax(logits.reshape(-1, v), -1)
    torch.manual_seed(0)
    student = (teacher + 2.0 * torch.randn_like(teacher)).requires_grad_()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, value in SETTINGS:
            store = write_setting(Path(tmp), kind, value, ids, logp)
            rows.append({"kind": kind, "value": value, **measure(store, kind, teacher, student)})
            print(rows[-1], flush=True)
    plot(rows, RESULTS / "frontier_bench.png")
    save("frontier_bench", {"teacher": "SmolLM2-135M-Instruct", "text": "pydoc_data.topics (held out)",
                            "positions": int(teacher.shape[0]), "cap": CAP, "student": "teacher logits + N(0, 2^2)",
                            "rows": rows, "targets": targets(rows), "plot": "benchmarks/results/frontier_bench.png"})


if __name__ == "__main__":
    main()
