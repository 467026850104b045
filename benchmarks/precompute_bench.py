"""Where precompute-logits' time goes: the teacher pass against the bare engine, per backend.

On one model and the same examples (the embedded demo corpus, packed with the model's tokenizer),
each in its own subprocess (a fresh engine; vLLM and transformers never share a process):

  a. vLLM forward only: the prompts, max_tokens=1, no logprobs;
  b. vLLM prompt_logprobs=k (flat_logprobs, no detokenize), the raw outputs only;
     b_arrays: the same plus kdstream's conversion to arrays (VllmTeacher.score), no store;
  c. kdstream precompute end to end (run_precompute, vLLM backend, store written and finalized);
  d. the same with the HF transformers backend.

Tokens/s count examples × seq_len. Each is measured twice in its process: ``cold`` (the first
pass, one-time costs included: vLLM compiles its rank kernel on the first prompt-logprobs call)
and ``warm`` (a second pass on the same engine). For a and b the cold pass runs over the next
--examples examples and the warm one over the benchmark's: vLLM's prefix cache would otherwise
serve a repeated plain prompt from the first pass (prompt-logprobs requests never read it). For
c and d the two passes are two run_precompute calls writing two stores from one loaded teacher,
each figure its summary's tokens_per_s (scoring + writes, model loading excluded). b_arrays is
warm only. Ratios are given for both.

    python -m benchmarks.precompute_bench [--model tiny|smollm2|DIR] [--examples 32] [--seq-len 256]
                                          [--top-k 64] [--batch-size 64] [--dtype float32]
                                          [--profile N]

``matmul_flops_per_token`` gives the arithmetic bound on c/a: a forward-only pass skips the LM
head at all but the last position, a teacher pass cannot (it needs every position's distribution).

--profile N: cProfile the warm pass of a (forward) and of c (precompute) and add their N top
functions by cumulative time. Saves benchmarks/results/precompute_bench-<model>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import ROOT, save

MODES = ("forward", "prompt_logprobs", "precompute_vllm", "precompute_hf")


def tiny_model(directory: Path, seq_len: int) -> Path:
    """A random GPT-NeoX (hidden 128, 2 heads of 64, 2 layers) with a BPE tokenizer of 4096
    trained on the demo corpus: the engine's fixed costs dominate, as on a GPU with a small model."""
    from benchmarks.fixtures import tiny_gpt_neox
    from kdstream.data import load_corpus
    from kdstream.text.tokenizers import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(load_corpus("demo").texts, 4096, directory / "tokenizer")
    tiny_gpt_neox(len(tokenizer), hidden=128, layers=2, heads=2, positions=max(2048, seq_len + 1),
                  eos=tokenizer.eos_token_id).save_pretrained(str(directory / "model"))
    tokenizer.save_pretrained(str(directory / "model"))
    return directory / "model"


def examples(args):
    """(2N, L): the benchmark's N examples (those precompute scores), then N more for cold passes."""
    from kdstream.data import load_corpus, pack_examples
    from kdstream.text.tokenizers import load_tokenizer

    ids = pack_examples(load_corpus("demo").texts, load_tokenizer(args.model), args.seq_len, 2 * args.examples).input_ids
    if len(ids) < 2 * args.examples:
        sys.exit(f"error: the demo corpus gives {len(ids)} examples of {args.seq_len} tokens, need {2 * args.examples}")
    return ids


def profiled(fn, top: int):
    """``fn()`` under cProfile when ``top``: (its result, the ``top`` functions by cumulative time)."""
    if not top:
        return fn(), None
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return result, [" ".join(line.split()) for line in lines[start:] if line.strip()]


def timed_passes(fn, input_ids, batch: int, profile: int = 0) -> dict:
    """tokens/s of ``fn`` in calls of ``batch``: a cold pass over input_ids[N:], then a warm one
    over the benchmark's input_ids[:N] (profiled when ``profile``)."""
    n = len(input_ids) // 2

    def one_pass(rows):
        t = time.perf_counter()
        for b in range(0, len(rows), batch):
            fn(rows[b : b + batch])
        return round(rows.size / (time.perf_counter() - t), 1)

    cold = one_pass(input_ids[n:])
    warm, top = profiled(lambda: one_pass(input_ids[:n]), profile)
    return {"cold": cold, "warm": warm, **({"profile": top} if top else {})}


def engine(args, backend: str = "vllm"):
    from kdstream.engines.vllm import EngineOptions

    # --max-num-batched-tokens is a vLLM flag: the hf backend refuses it
    return EngineOptions(dtype=args.dtype,
                         max_num_batched_tokens=args.max_num_batched_tokens if backend == "vllm" else None)


def mode_forward(args) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from kdstream.engines.vllm import make_llm

    input_ids = examples(args)
    llm = make_llm(args.model, max_model_len=args.seq_len + 1, engine=engine(args))
    params = SamplingParams(max_tokens=1, detokenize=False)

    def forward(rows):
        llm.generate([TokensPrompt(prompt_token_ids=r.tolist()) for r in rows], params, use_tqdm=False)

    return timed_passes(forward, input_ids, args.batch_size, args.profile)


def mode_prompt_logprobs(args) -> dict:
    from vllm.inputs import TokensPrompt

    from kdstream.precompute.vllm_backend import VllmTeacher

    input_ids = examples(args)
    teacher = VllmTeacher(args.model, args.top_k, args.seq_len + 1, engine(args))  # the same engine and params as c

    def raw(rows):
        teacher.llm.generate([TokensPrompt(prompt_token_ids=r.tolist()) for r in rows], teacher.params, use_tqdm=False)

    return timed_passes(raw, input_ids, args.batch_size) | {
        "arrays": timed_passes(teacher.score, input_ids, args.batch_size)["warm"]}  # both passes warm here


def mode_precompute(args, backend: str) -> dict:
    """Two stores from one loaded teacher: the first run is cold, the second warm."""
    from kdstream.model_files import check_model_dir
    from kdstream.precompute import PrecomputeOptions, run_precompute
    from kdstream.precompute.backends import make_teacher

    keep = ("tokens", "seconds", "tokens_per_s", "write_seconds", "write_wait_seconds", "bytes_per_token")
    with tempfile.TemporaryDirectory() as tmp:
        def opts(name):
            return PrecomputeOptions(model=args.model, dataset="demo", out=str(Path(tmp) / name), top_k=args.top_k,
                                     seq_len=args.seq_len, max_examples=args.examples, batch_size=args.batch_size,
                                     backend=backend, engine=engine(args, backend))

        teacher = make_teacher(backend, check_model_dir(args.model, "teacher"), opts("cold.zarr"))
        cold = run_precompute(opts("cold.zarr"), teacher)
        warm, top = profiled(lambda: run_precompute(opts("warm.zarr"), teacher), args.profile)
    return {"cold": cold["tokens_per_s"], "warm": warm["tokens_per_s"], "warm_run": {k: warm[k] for k in keep},
            **({"profile": top} if top else {})}


def matmul_flops_per_token(model_dir: str, seq_len: int) -> dict:
    """Forward matmul FLOPs per token from the weight shapes: ``body`` (2 x every non-vocabulary
    weight, plus causal attention scores 2 x layers x seq_len x hidden) and ``head`` (2 x V x H, the
    LM head). Forward-only (a) runs the head at one position per prompt, a teacher pass (b, c) at
    all of them, so on a compute-bound machine c/a <= body / (body + head) whatever the software."""
    from safetensors import safe_open

    config = json.loads((Path(model_dir) / "config.json").read_text())
    vocab, hidden, layers = config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]
    body = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = st.get_slice(name).get_shape()
                if len(shape) == 2 and vocab not in shape:  # embeddings and the head are not body matmuls
                    body += 2 * shape[0] * shape[1]
    body += 2 * layers * seq_len * hidden  # QK^T and AV over seq_len/2 keys on average, causal
    head = 2 * vocab * hidden
    return {"body": body, "head": head, "ceiling_c_over_a": round(body / (body + head * (1 - 1 / seq_len)), 3)}


def run_mode(args) -> dict:
    if args.mode == "forward":
        return mode_forward(args)
    if args.mode == "prompt_logprobs":
        return mode_prompt_logprobs(args)
    return mode_precompute(args, args.mode.removeprefix("precompute_"))


def child(args, mode: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.precompute_bench", "--mode", mode, "--model", args.model,
           "--examples", str(args.examples),
           "--seq-len", str(args.seq_len), "--top-k", str(args.top_k), "--batch-size", str(args.batch_size),
           "--dtype", args.dtype]
    if args.max_num_batched_tokens:
        cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    if args.profile and mode in ("forward", "precompute_vllm"):
        cmd += ["--profile", str(args.profile)]
    env = {**os.environ, "TQDM_DISABLE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: mode {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a HF model directory")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="examples per engine call (precompute's default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--profile", type=int, default=0, help="top N functions of a and c by cumulative time")
    ap.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # one measurement (child)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        name = args.model
        if args.model == "tiny":
            args.model = str(tiny_model(Path(tmp), args.seq_len))
        elif args.model == "smollm2":
            from benchmarks.smollm2 import smollm2_dir

            args.model = str(smollm2_dir())
        r = {mode: child(args, mode) for mode in MODES}
        flops = matmul_flops_per_token(args.model, args.seq_len)
    profiles = {mode: r[mode].pop("profile") for mode in MODES if "profile" in r[mode]}
    a, b, c, d = (r[mode] for mode in MODES)

    def ratios(when):
        return {"c/a": round(c[when] / a[when], 3), "c/b": round(c[when] / b[when], 3),
                "d/a": round(d[when] / a[when], 3), "d/c": round(d[when] / c[when], 3)}
    save(f"precompute_bench-{Path(name).name}", {
        "model": name, "examples": args.examples, "seq_len": args.seq_len, "top_k": args.top_k,
        "batch_size": args.batch_size, "dtype": args.dtype, "max_num_batched_tokens": args.max_num_batched_tokens,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "tokens_per_s": {
            "a_forward": a, "b_prompt_logprobs": {k: b[k] for k in ("cold", "warm")}, "b_arrays_warm": b["arrays"],
            "c_precompute_vllm": {k: c[k] for k in ("cold", "warm")}, "d_precompute_hf": {k: d[k] for k in ("cold", "warm")},
        },
        "precompute_vllm_warm_run": c["warm_run"], "precompute_hf_warm_run": d["warm_run"],
        "ratios_warm": ratios("warm"), "ratios_cold": ratios("cold"),
        "matmul_flops_per_token": flops,
        **({"profile": profiles} if profiles else {}),
    })


if __name__ == "__main__":
    main()
