"""Prompts → teacher-written responses with their distributions (one vLLM pass) → two students:
soft KD on the teacher's own text, and sequence-level KD (cross-entropy on the sampled tokens).

    python examples/generate_then_distill.py --teacher TEACHER_DIR --student STUDENT_DIR \
        --prompts prompts.jsonl --work runs/gen [--samples 2] [--max-new-tokens 64] [--epochs 1]

TEACHER_DIR: a chat model (its tokenizer has a chat template); STUDENT_DIR: a causal LM with the
teacher's tokenizer. prompts.jsonl: rows with a ``prompt`` field, or chat rows (a last assistant
turn is dropped and written anew). Each step is the CLI a user would type; the script prints them.

At the end, ``extract-eval`` asks of each student which of the teacher's responses it recites:
greedy decoding from each prompt, compared with the response's first ``--suffix-len`` tokens.
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from kdstream.errors import KdError, run_main


def kdstream(*args) -> dict:
    """``python -m kdstream ARGS``, echoed; its JSON summary (last stdout line)."""
    cmd = [sys.executable, "-m", "kdstream", *map(str, args)]
    print("$", shlex.join(["kdstream", *map(str, args)]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise KdError(f"kdstream {args[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--suffix-len", type=int, default=8, help="response tokens a recitation must match")
    args = p.parse_args()
    work = Path(args.work)
    store = work / "responses.zarr"

    # 1. the teacher writes the responses; the store keeps its top-k at every token it wrote
    gen = kdstream("precompute-logits", "--generate", "--model", args.teacher, "--dataset", args.prompts,
                   "--out", store, "--samples", args.samples, "--max-new-tokens", args.max_new_tokens,
                   "--temperature", args.temperature, "--top-k", args.top_k, "--dtype", args.dtype, "--overwrite")
    print(f"  {gen['examples']} responses, {gen['target_positions']} generated tokens, "
          f"{gen['bytes_per_target_position']} B per generated token")

    # 2. two students on the same responses: soft targets, and the sampled tokens as hard targets
    common = ["distill", "--logits-store", store, "--model", args.student, "--epochs", args.epochs, "--lr", args.lr,
              "--batch-size", 8, "--overwrite"]
    runs = {"kd": kdstream(*common, "--out", work / "kd"),
            "seq_ce": kdstream(*common, "--loss", "ce", "--out", work / "seq_ce")}

    # 3. which of the teacher's responses each student recites from its prompt (greedy, exact match)
    report = {}
    for name, run in runs.items():
        ev = kdstream("extract-eval", "--model", work / name, "--logits-store", store, "--suffix-len", args.suffix_len,
                      "--dtype", args.dtype, "--out", work / f"eval_{name}", "--overwrite")
        report[name] = {"final_loss": run["final_loss"], "judged": ev["examples"], "recited": ev["memorized"],
                        "rate": ev["rate"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    run_main(main)
