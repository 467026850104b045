"""Cost of a KD training step vs a CE step on the same student and batch (the teacher never runs),
and vs an online-KD step that runs a larger teacher's forward pass each step.

Student: the demo's GPT-NeoX (3 layers, hidden 192), V = 4096, batch 8 x 128 tokens, top-16.
Online teachers, same depth, wider: hidden 384 (4x the student's non-embedding parameters, the
issue's setting) and hidden 576 (9x, about the paper's Pythia-12B / 1.4B = 8.6x).
Prints one JSON object with seconds per step (median of timed steps), the ratios, and for each
teacher the arithmetic floor of offline/online: a student step (forward + backward ≈ 3 forwards)
against that plus a teacher forward of r student forwards, 3 / (3 + r), which no implementation
of offline KD can beat (the offline step is at least the student's own step).
    python -m benchmarks.kd_step_bench [--steps 10]   # saves benchmarks/results/kd_step_bench.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPTNeoXForCausalLM

from benchmarks.fixtures import tiny_gpt_neox
from benchmarks.results import save
from kdstream.distill.objective import Objective

V, B, L, K = 4096, 8, 128, 16


def gpt_neox(layers: int, hidden: int, heads: int) -> GPTNeoXForCausalLM:
    return tiny_gpt_neox(V, seed=None, hidden=hidden, layers=layers, heads=heads, positions=2 * L)


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    student = gpt_neox(3, 192, 3)
    teachers = {"4x": gpt_neox(3, 384, 6).eval(), "9x": gpt_neox(3, 576, 9).eval()}  # non-embedding params
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ids = torch.randint(0, V, (B, L))
    with torch.no_grad():
        top = torch.log_softmax(teachers["4x"](input_ids=ids).logits[:, :-1], -1).topk(K, -1)  # stored targets
    ce_obj = Objective(student, loss="ce", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=4096)
    kd_obj = Objective(student, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=4096)

    def train(obj, teacher=None):
        def step():
            topk = top
            if teacher is not None:  # online KD: the teacher's forward pass is part of every step
                with torch.no_grad():
                    topk = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1], -1).topk(K, -1)
            opt.zero_grad(set_to_none=True)
            loss = obj(ids) if obj is ce_obj else obj(ids, topk.indices, topk.values)
            loss[0].backward()
            opt.step()
        return step

    ce = time_steps(train(ce_obj), a.steps)
    kd = time_steps(train(kd_obj), a.steps)
    params = lambda m: sum(p.numel() for p in m.parameters() if p.dim() > 1) - 2 * V * m.config.hidden_size  # noqa: E731
    online = {}
    for name, teacher in teachers.items():
        r = params(teacher) / params(student)
        t = time_steps(train(kd_obj, teacher), a.steps)
        online[name] = {"teacher_nonembedding_params": params(teacher), "params_ratio": round(r, 2),
                        "online_kd_step_s": round(t, 4), "offline_over_online": round(kd / t, 3),
                        "floor_3_over_3_plus_r": round(3 / (3 + r), 3)}
    save("kd_step_bench", {
        "student_nonembedding_params": params(student), "ce_step_s": round(ce, 4), "offline_kd_step_s": round(kd, 4),
        "kd_over_ce": round(kd / ce, 3), "online": online,
    })


if __name__ == "__main__":
    main()
