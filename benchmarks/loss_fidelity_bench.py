"""How close is the top-k KD gradient to the dense (full-vocabulary) one, on a real teacher?

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2.py) over real text (the embedded corpus),
fp32 logits of every position. Student logits: the teacher's plus Gaussian noise (sigma 2), a
student that is close but not equal. For each loss, tail treatment and k, the cosine between the
gradient w.r.t. the student logits of the top-k loss and of the dense loss, and the top-k
loss ÷ dense loss. Prints one JSON object.

    python benchmarks/loss_fidelity_bench.py [--examples 4 --seq-len 128]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from smollm2 import smollm2_dir  # noqa: E402

from kdstream.distill.losses import KD_LOSSES, TAILS, dense_kd_loss, kd_loss  # noqa: E402


def teacher_logits(examples: int, seq_len: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from kdstream.data import load_corpus, load_tokenizer, pack_examples

    path = smollm2_dir()
    tok = load_tokenizer(path)
    ids = pack_examples(load_corpus("demo").texts, tok, seq_len, examples).input_ids
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.reshape(-1, model.config.vocab_size)  # (N, V)


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g.flatten()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=2.0)
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
    print(json.dumps({"teacher": "SmolLM2-135M-Instruct", "positions": teacher.shape[0], "vocab": teacher.shape[1],
                      "temperature": a.temperature, "student": "teacher logits + N(0, 2^2)",
                      "top64_mass_mean": round(float(mass.mean()), 4), "rows": rows}))


if __name__ == "__main__":
    main()
