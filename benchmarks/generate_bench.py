"""Teacher-written responses in one pass (precompute-logits --generate) against the usual two:
generate, then score the responses in a second, teacher-forced pass.

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2.py, fp32, vLLM, top-64, raw logprobs).
Prompts: the first user turns of chatterbot-corpus conversations (benchmarks/conversation_bench.py),
rendered with the teacher's ChatML template.

  1. time, one engine, warmed up, the same prompts and per-response seeds:
       one pass   generation with SamplingParams(logprobs=64): the responses and their top-64
       two passes generation without logprobs, then prompt_logprobs=64 over prompt + response
     (the same tokens: the seeds fix the draws, and raw logprobs do not change them); the engine's
     start-up is measured too (a second pass in its own process pays it again);
  2. fidelity: the one-pass rows against the teacher-forced rows of the same tokens (top-64
     overlap, the largest |logprob| gap on the ids both list, the sampled token's logprob), and the
     engine's own noise: the same tokens scored twice, in other batches;
  3. the store: `precompute-logits --generate` end to end (default qdelta encoding), its wall
     time, bytes per generated token and its rows against the in-process one-pass values.

    python -m benchmarks.generate_bench [--prompts 48] [--max-new-tokens 64] [--work DIR]

Saves benchmarks/results/generate_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.conversation_bench import chatterbot_conversations, cli
from benchmarks.results import save
from benchmarks.smollm2 import smollm2_dir

K = 64


def compare(a: dict, b: dict) -> dict:
    """Rows of two passes over the same tokens: top-k set overlap, the largest |logprob| gap over
    the ids both list, and the largest gap of the target (sampled) token's logprob."""
    overlap, gap, target_gap = [], 0.0, 0.0
    for ra, rb in zip(a, b):
        for ia, la, ib, lb in zip(ra["topk_ids"], ra["topk_logprobs"], rb["topk_ids"], rb["topk_logprobs"]):
            shared, at_a, at_b = np.intersect1d(ia, ib, return_indices=True)
            overlap.append(len(shared) / len(ia))
            if len(shared):
                gap = max(gap, float(np.abs(la[at_a] - lb[at_b]).max()))
        target_gap = max(target_gap, float(np.abs(ra["target_logprob"] - rb["target_logprob"]).max()))
    return {"rows": len(overlap), "topk_overlap": round(float(np.mean(overlap)), 5),
            "topk_overlap_min": round(float(np.min(overlap)), 4), "max_abs_logprob_gap": gap,
            "max_abs_target_logprob_gap": target_gap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="Working directory (default: a temporary one).")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    work = Path(args.work or tempfile.mkdtemp(prefix="generate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = smollm2_dir()
    rows = [{"messages": r["messages"][:1]} for r in chatterbot_conversations(args.prompts)]
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    from transformers import AutoTokenizer

    from kdstream.data.conversations import prompts_of
    from kdstream.engines.vllm import EngineOptions
    from kdstream.precompute.generate import request_seed, stop_token_ids
    from kdstream.precompute.vllm_backend import VllmTeacher
    from kdstream.text.chat import prompt_tokens, template_of

    tok = AutoTokenizer.from_pretrained(str(teacher))
    template = template_of(tok, None)
    prompts = [prompt_tokens(tok, template, m) for m in prompts_of(rows, str(data)).items]
    width = max(map(len, prompts)) + args.max_new_tokens
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": 1.0,
                  "stop_token_ids": stop_token_ids(tok, template, teacher)}
    seeds = [request_seed(args.seed, e) for e in range(len(prompts))]

    start = time.perf_counter()
    engine = VllmTeacher(str(teacher), K, width + 1, EngineOptions(dtype="float32"))
    engine_start = time.perf_counter() - start
    engine.generate(prompts[:2], seeds[:2], {**generation, "max_new_tokens": 4})  # warm-up

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    one, one_s = timed(lambda: engine.generate(prompts, seeds, generation))
    plain = [SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, seed=s,
                            detokenize=False, stop_token_ids=generation["stop_token_ids"]) for s in seeds]
    texts, gen_s = timed(lambda: engine.llm.generate([TokensPrompt(prompt_token_ids=p.tolist()) for p in prompts],
                                                     plain, use_tqdm=False))
    responses = [np.asarray(o.outputs[0].token_ids, dtype=np.int64) for o in texts]
    same_tokens = all(np.array_equal(r, t) for r, (t, _, _) in zip(responses, one))

    # prompt + response, padded: the teacher-forced pass over exactly the one-pass tokens
    lengths = np.array([len(p) + len(t) for p, (t, _, _) in zip(prompts, one)])
    ids = np.zeros((len(prompts), int(lengths.max())), dtype=np.int64)
    for i, (p, (t, _, _)) in enumerate(zip(prompts, one)):
        ids[i, : lengths[i]] = np.concatenate([p, t])
    scored, score_s = timed(lambda: engine.score(ids, lengths))
    half = len(prompts) // 2  # the engine's noise: the same tokens again, in two other batches, reversed
    again = [engine.score(ids[s][::-1], lengths[s][::-1]) for s in (slice(0, half), slice(half, None))]
    again = {key: np.concatenate([a[key][::-1] for a in again]) for key in scored}

    def at_response(arrays: dict) -> list[dict]:
        """Each example's rows at its response positions (row len(p)-1+j predicts response token j)."""
        return [{key: arrays[key][i, len(p) - 1 : lengths[i] - 1] for key in ("topk_ids", "topk_logprobs",
                                                                               "target_logprob")}
                for i, p in enumerate(prompts)]

    one_rows = [{key: got[key] for key in ("topk_ids", "topk_logprobs", "target_logprob")} for _, got, _ in one]
    generated = int(sum(len(t) for t, _, _ in one))
    engine = None  # frees the engine before the next one starts

    # the store, end to end, as a user runs it (its own engine start, the writer, finalize)
    out = work / "generated.zarr"
    start = time.perf_counter()
    summary = cli("precompute-logits", "--generate", "--model", teacher, "--dataset", data, "--out", out,
                  "--top-k", K, "--max-new-tokens", args.max_new_tokens, "--temperature", args.temperature,
                  "--seed", args.seed, "--dtype", "float32", "--overwrite")
    cli_wall = time.perf_counter() - start
    from kdstream.storage import open_store

    store = open_store(out)
    items = [store[i] for i in range(len(store))]
    stored = compare(one_rows, items) | {"encoding_bound": store.encoding["max_abs_error"],
                                         "same_tokens": all(np.array_equal(x["input_ids"][len(p):], t)
                                                            for x, p, (t, _, _) in zip(items, prompts, one))}
    reasons = store.attrs["generation"]["finish_reasons"]
    finish = {r: int(sum(1 for x in items if reasons[int(x["finish_reason"])] == r)) for r in reasons}
    figures = {
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "k": K,
        "generated_tokens": generated, "finish_reasons": finish,
        "time": {"engine_start_s": round(engine_start, 2), "one_pass_s": round(one_s, 3),
                 "generate_only_s": round(gen_s, 3), "score_s": round(score_s, 3),
                 "one_over_two_passes": round(one_s / (gen_s + score_s), 3),
                 # two passes in two processes pay the engine's start twice
                 "one_over_two_passes_with_starts": round((engine_start + one_s)
                                                          / (2 * engine_start + gen_s + score_s), 3),
                 "same_tokens_with_and_without_logprobs": same_tokens},
        "one_pass_vs_teacher_forced": compare(one_rows, at_response(scored)),
        "engine_noise_teacher_forced_twice": compare(at_response(scored), at_response(again)),
        "store": {"wall_s": round(cli_wall, 2), "precompute_seconds": summary["seconds"],
                  "bytes_per_generated_token": summary["bytes_per_target_position"],
                  "bytes_per_token": summary["bytes_per_token"], "encoding": "qdelta",
                  "vs_one_pass_in_process": stored},
    }
    save("generate_bench", figures)


if __name__ == "__main__":
    main()
