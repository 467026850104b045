"""How close is the top-k KD gradient to the dense (full-vocabulary) one, on a real teacher?

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2.py) over real text (the embedded corpus),
fp32 logits of every position. Student logits: the teacher's plus Gaussian noise (sigma 2), a
student that is close but not equal. For each loss, tail treatment and k, the cosine between the
gradient w.r.t. the student logits of the top-k loss and of the dense loss, and the top-k
loss ÷ dense loss. Then sampled targets (``sampled`` in the JSON): N = 64 draws per position from
the top-64 + tail, as ``--targets sampled`` stores them (``encoding.draw_samples``), read back as
the reader presents them; ``--loss ce_sampled`` (no temperature) against the dense T = 1 forward
KL gradient (= the dense CE's), next to top-64 forward KL at T = 1; and forward KL at T on the
sampled view (tempered counts) against the dense T one. grad_cosine is for one set of draws
(seed 0); mean_grad_cosine for the mean gradient over --draw-sets sets (seeds 0..n-1): a draw
set's gradient is noisy, its mean shows where the estimator points. Saves
benchmarks/results/loss_fidelity_bench.json.

    python -m benchmarks.loss_fidelity_bench [--examples 4 --seq-len 128 --draw-sets 8]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.results import save
from benchmarks.smollm2 import smollm2_dir
from kdstream.distill.losses import KD_LOSSES, TAILS, dense_kd_loss, kd_loss, sampled_ce_loss
from kdstream.storage.encoding import decode_samples, draw_samples

SAMPLES, SOURCE_K = 64, 64


def teacher_logits(examples: int, seq_len: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from kdstream.data import load_corpus, pack_examples
    from kdstream.text.tokenizers import load_tokenizer

    path = smollm2_dir()
    tok = load_tokenizer(path)
    ids = pack_examples(load_corpus("demo").texts, tok, seq_len, examples).input_ids
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.reshape(-1, model.config.vocab_size)  # (N, V)


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g.flatten()


def sampled_view(logp: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) teacher log-probs → the sampled store's top-k view (ids, log(count / N)), (N, 64) each."""
    top = logp.topk(SOURCE_K, -1)
    d = draw_samples(top.indices.numpy(), top.values.numpy(), SAMPLES, min(SAMPLES, SOURCE_K),
                     np.random.default_rng(seed))
    ids, logprobs, _ = decode_samples(d["sample_ids"], d["sample_counts"], d["sample_tail_count"], SAMPLES)
    return torch.from_numpy(ids), torch.from_numpy(logprobs)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b, dim=0)), 4)


def sampled_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float, draw_sets: int) -> list[dict]:
    logp = torch.log_softmax(teacher, -1)
    top = logp.topk(SOURCE_K, -1)
    views = [sampled_view(logp, seed) for seed in range(draw_sets)]
    rows = []
    for t in (1.0, temperature):
        g_dense = grad_of(dense_kd_loss(student, teacher, kind="forward_kl", temperature=t), student)
        for tail in TAILS:
            g_top = grad_of(kd_loss(student, top.indices, top.values, kind="forward_kl", temperature=t, tail=tail), student)
            rows.append({"targets": f"top{SOURCE_K}", "loss": "forward_kl", "temperature": t, "tail": tail,
                         "grad_cosine": cosine(g_top, g_dense)})
            losses = [("ce_sampled", lambda i, lp, tail=tail: sampled_ce_loss(student, i, lp, tail=tail))] if t == 1.0 else []
            losses.append(("forward_kl", lambda i, lp, t=t, tail=tail: kd_loss(student, i, lp, kind="forward_kl",
                                                                            temperature=t, tail=tail)))
            for name, fn in losses:
                grads = [grad_of(fn(i, lp), student) for i, lp in views]
                rows.append({"targets": f"sampled{SAMPLES}", "loss": name, "temperature": t, "tail": tail,
                             "grad_cosine": cosine(grads[0], g_dense),
                             "mean_grad_cosine": cosine(torch.stack(grads).mean(0), g_dense)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--draw-sets", type=int, default=8)
    a = ap.parse_args()
    teacher = teacher_logits(a.examples, a.seq_len)
    torch.manual_seed(0)
    student = (teacher + 2.0 * torch.randn_like(teacher)).requires_grad_()
    logp = torch.log_softmax(teacher, -1)
    rows = []
    for kind in KD_LOSSES:
        dense = dense_kd_loss(student, teacher, kind=kind, temperature=a.temperature)
        g_dense = grad_of(dense, student)
        for k in (8, 64, 256):
            top = logp.topk(k, -1)
            for tail in TAILS:
                loss = kd_loss(student, top.indices, top.values, kind=kind, temperature=a.temperature, tail=tail)
                rows.append({"loss": kind, "k": k, "tail": tail,
                             "grad_cosine": round(float(F.cosine_similarity(grad_of(loss, student), g_dense, dim=0)), 4),
                             "loss_ratio": round(float(loss / dense), 4)})
    mass = logp.topk(64, -1).values.exp().sum(-1)
    save("loss_fidelity_bench", {"teacher": "SmolLM2-135M-Instruct", "positions": teacher.shape[0], "vocab": teacher.shape[1],
                      "temperature": a.temperature, "student": "teacher logits + N(0, 2^2)",
                      "top64_mass_mean": round(float(mass.mean()), 4), "rows": rows,
                      "sampled": {"samples": SAMPLES, "source_k": SOURCE_K, "draw_sets": a.draw_sets,
                                  "rows": sampled_rows(student, teacher, a.temperature, a.draw_sets)}})


if __name__ == "__main__":
    main()
