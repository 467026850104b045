"""Conversations on a real ChatML teacher: what assistant-only targets save, how faithful the rows
are, whether a KD student beats a CE student on the assistant's tokens, and training speed.

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2.py, fp32, its own ChatML template with its
default system prompt). Conversations: the English files of the chatterbot-corpus package (pip
download, not installed; short question-answer dialogues, speakers alternating user / assistant),
shuffled with a fixed seed. Not the project's own corpus.

  1. stores: --train-on assistant and --train-on all over the same conversations (vLLM, top-64,
     qdelta); bytes of each, and the bound (target positions ÷ all positions) × all-positions bytes;
  2. fidelity: an fp32 store's rows (and the qdelta store's) against the teacher's transformers
     forward pass on the rendered conversation (fp32): top-k overlap, the largest |logprob| gap,
     the encoding bound;
  3. students: a small Llama with SmolLM2's tokenizer, from scratch, trained with KD and with CE
     on the assistant store (the same tokens), --seeds seeds; held-out assistant bits per byte;
  4. speed: distill's real (unpadded) tokens per second on the conversations against fixed windows
     of the same rendered text (a text store of the same model and tokens).

--responses teacher: instead, the teacher writes each conversation's last answer
(`precompute-logits --generate`, one sample at --temperature 1) and the students of 3. train on
that store; the held-out bits per byte are over the teacher's own held-out answers (the setting
of sequence-level KD: the student learns to answer as the teacher does).

    python -m benchmarks.conversation_bench [--conversations 600] [--held-out 100] [--seeds 3]
        [--epochs 3] [--lr 2e-3] [--responses dataset|teacher] [--work DIR]

Saves benchmarks/results/conversation_bench.json (conversation_teacher_responses.json).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks.results import ROOT, save
from benchmarks.smollm2 import CACHE, smollm2_dir

CORPUS_WHEEL = "chatterbot-corpus==1.3.3"
# student arms: distill's flags beyond the common ones (kd: distill's defaults)
ARMS = {"kd": [], "ce": ["--loss", "ce"], "kd_t1": ["--temperature", "1"], "kd_alpha05": ["--alpha-ce", "0.5"]}


def chatterbot_conversations(n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` conversations (messages rows) from chatterbot-corpus' English YAML files."""
    import yaml

    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("chatterbot_corpus-1.3.3-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", CORPUS_WHEEL, "-d",
                        str(wheels)], check=True)
    rows = []
    with zipfile.ZipFile(next(wheels.glob("chatterbot_corpus-1.3.3-*.whl"))) as z:
        for name in sorted(z.namelist()):
            if not (name.startswith("chatterbot_corpus/data/english/") and name.endswith(".yml")):
                continue
            for turns in yaml.safe_load(z.read(name)).get("conversations") or []:
                turns = [str(t).strip() for t in turns if str(t).strip()]
                if len(turns) >= 2:
                    roles = ["user", "assistant"] * len(turns)
                    rows.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]})
    random.Random(seed).shuffle(rows)
    return rows[:n]


def cli(*args, env=None) -> dict:
    """``python -m kdstream ARGS``; its last stdout line as JSON (the command's summary)."""
    proc = subprocess.run([sys.executable, "-m", "kdstream", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", **(env or {})}, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"kdstream {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def student_init(teacher: Path, out: Path) -> Path:
    """Config + tokenizer of a small Llama with the teacher's vocabulary (distill initializes it)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(teacher))
    config.update({"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 2, "head_dim": 64})
    config.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(str(out))
    return out


def fidelity(store_path: Path, teacher: Path, count: int) -> dict:
    """The store's rows at their positions against the teacher's fp32 forward pass."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from kdstream.storage import open_store

    store = open_store(store_path)
    model = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    overlap, gap, rows = [], 0.0, 0
    for i in range(min(count, len(store))):
        item = store[i]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(item["input_ids"][None])).logits[0].double(), -1).numpy()
        k = item["topk_ids"].shape[1]
        for j, t in enumerate(item["positions"]):
            ref = np.argpartition(-logp[t], k)[:k]
            overlap.append(len(set(ref.tolist()) & set(item["topk_ids"][j].tolist())) / k)
            gap = max(gap, float(np.abs(logp[t][item["topk_ids"][j]] - item["topk_logprobs"][j]).max()))
            rows += 1
    return {"conversations": min(count, len(store)), "rows": rows, "topk_overlap": float(np.mean(overlap)),
            "max_abs_logprob_gap": gap, "encoding_bound": float(store.encoding.get("max_abs_error", 0.0))}


def teacher_bits_per_byte(store_path: Path, teacher: Path, held_out: int) -> float:
    """The teacher's own bits per byte on the held-out assistant tokens (the store's exact target
    logprobs at the last ``held_out`` examples' positions): what a student could reach by KD alone."""
    import math

    import numpy as np
    from transformers import AutoTokenizer

    from kdstream.storage import open_store
    from kdstream.text.token_bytes import byte_vocab

    store = open_store(store_path)
    lengths = byte_vocab(AutoTokenizer.from_pretrained(str(teacher))).lengths
    nats = nbytes = 0.0
    for i in range(len(store) - held_out, len(store)):
        item = store[i]
        nats -= float(np.sum(item["target_logprob"], dtype=np.float64))
        nbytes += float(lengths[item["input_ids"][item["positions"] + 1]].sum())
    return round(nats / math.log(2) / nbytes, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=600)
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--fidelity-conversations", type=int, default=40)
    ap.add_argument("--arms", default="kd,ce", help=f"Student arms, comma-separated, of {', '.join(ARMS)}.")
    ap.add_argument("--responses", choices=("dataset", "teacher"), default="dataset",
                    help="Whose answers the students train on: the dataset's, or the teacher's (--generate).")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="--responses teacher: most tokens per answer.")
    ap.add_argument("--name", default=None, help="results/NAME.json (default: conversation_bench, or "
                                                  "conversation_teacher_responses with --responses teacher)")
    ap.add_argument("--work", default=None, help="Working directory (default: a temporary one).")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="conversation-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = smollm2_dir()
    rows = chatterbot_conversations(args.conversations)
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
    if args.responses == "teacher":
        return teacher_responses(work, teacher, data, args, env)
    common = ["--model", teacher, "--dataset", data, "--top-k", 64, "--seq-len", args.seq_len, "--dtype", "float32",
              "--on-long", "drop"]
    stores = {}
    for train_on in ("assistant", "all"):
        out = work / f"{train_on}.zarr"
        if not (out / "zarr.json").exists() or not json.loads((out / "zarr.json").read_text())["attributes"].get("complete"):
            cli("precompute-logits", *common, "--out", out, "--train-on", train_on, env=env)  # resumes a killed run
        stores[train_on] = json.loads(subprocess.run([sys.executable, "-m", "kdstream", "store", "info", "--json", out],
                                                     capture_output=True, text=True, check=True).stdout)["size"]
    a, b = stores["assistant"], stores["all"]
    bound = a["target_positions"] / b["target_positions"] * b["bytes"]
    figures = {"conversations": a["examples"], "stores": stores,
               "bytes": {"assistant": a["bytes"], "all": b["bytes"], "bound": round(bound),
                         "assistant_over_bound": round(a["bytes"] / bound, 3),
                         "target_share": round(a["target_positions"] / b["target_positions"], 3),
                         "within_bound_plus_5pct": a["bytes"] <= 1.05 * bound}}
    # fidelity: an fp32 store of the first conversations (exact values: the gap is the engines'),
    # and the qdelta store (its encoding's bound on top)
    exact = work / "fidelity_fp32.zarr"
    if not (exact / "zarr.json").exists() or not json.loads((exact / "zarr.json").read_text())["attributes"].get("complete"):
        cli("precompute-logits", *common, "--out", exact, "--max-examples", args.fidelity_conversations,
            "--logprob-encoding", "fp32", env=env)
    figures["fidelity"] = {"fp32": fidelity(exact, teacher, args.fidelity_conversations),
                           "qdelta": fidelity(work / "assistant.zarr", teacher, args.fidelity_conversations)}

    figures["students"] = students(work, work / "assistant.zarr", teacher, args)
    figures["speed"] = speed(work, work / "student_init", teacher, rows, args)
    save(args.name or "conversation_bench", figures)


def students(work: Path, store: Path, teacher: Path, args, prefix: str = "") -> dict:
    """The student arms on ``store``, --seeds seeds each, and the teacher's own held-out figure."""
    init = student_init(teacher, work / "student_init")
    train = ["distill", "--logits-store", store, "--model", init, "--epochs", args.epochs,
             "--lr", args.lr, "--batch-size", args.batch_size, "--eval-examples", args.held_out]
    runs = {arm: [] for arm in args.arms.split(",")}
    for seed in range(args.seeds):
        for arm in runs:
            out = work / (prefix + (f"{arm}{seed}" if arm in ("kd", "ce") else f"{arm}_{seed}"))
            if (out / "train_summary.json").exists():  # a finished run of an earlier invocation
                s = json.loads((out / "train_summary.json").read_text())
            else:
                s = cli(*train, "--seed", seed, "--out", out, "--overwrite", *ARMS[arm])
            runs[arm].append({"seed": seed, "held_out_bits_per_byte": s["held_out_bits_per_byte"],
                              "held_out_tokens": s["held_out_tokens"], "seconds": s["seconds"]})
    kd_wins = [k["held_out_bits_per_byte"] < c["held_out_bits_per_byte"] for k, c in zip(runs["kd"], runs["ce"])]
    return {"flags": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                      "loss": "forward_kl at distill's defaults (T 2, bucket tail, alpha-ce 0)",
                      "arms": {arm: " ".join(ARMS[arm]) for arm in runs},
                      "student": "Llama 2x128, from scratch"},
            "teacher_held_out_bits_per_byte": teacher_bits_per_byte(store, teacher, args.held_out),
            "runs": runs, "kd_better_every_seed": all(kd_wins), "kd_better_seeds": sum(kd_wins)}


def teacher_responses(work: Path, teacher: Path, data: Path, args, env: dict) -> None:
    """--responses teacher: the teacher writes the answers (one vLLM pass, its top-64 at every
    token it wrote), and the student arms train on them."""
    store = work / "generated.zarr"
    if not (store / "zarr.json").exists() or not json.loads((store / "zarr.json").read_text())["attributes"].get("complete"):
        cli("precompute-logits", "--generate", "--model", teacher, "--dataset", data, "--out", store, "--top-k", 64,
            "--dtype", "float32", "--max-new-tokens", args.max_new_tokens, "--temperature", 1, "--seed", 0, env=env)
    info = json.loads(subprocess.run([sys.executable, "-m", "kdstream", "store", "info", "--json", store],
                                     capture_output=True, text=True, check=True).stdout)["size"]
    save(args.name or "conversation_teacher_responses", {
        "responses": {"examples": info["examples"], "target_positions": info["target_positions"],
                      "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "samples": 1},
        "students": students(work, store, teacher, args, prefix="gen_")})


def speed(work: Path, init: Path, teacher: Path, rows: list[dict], args) -> dict:
    """Real tokens per second of one distill epoch on the conversations (packed, and padded batches
    cut after their last target) and on fixed windows of the same rendered conversations."""
    from transformers import AutoTokenizer

    from kdstream.storage import open_store

    tok = AutoTokenizer.from_pretrained(str(teacher))
    text = work / "rendered.jsonl"
    text.write_text("".join(json.dumps({"text": tok.apply_chat_template(r["messages"], tokenize=False)}) + "\n"
                            for r in rows))
    windows = work / "windows.zarr"
    if not (windows / "zarr.json").exists():
        cli("precompute-logits", "--model", teacher, "--dataset", text, "--out", windows, "--top-k", 64,
            "--seq-len", 128, "--dtype", "float32", "--overwrite", env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    conv = open_store(work / "assistant.zarr")
    real = int(sum(conv.read(0, len(conv), ("length",))["length"]))
    win = open_store(windows)
    out = {}
    for name, store, tokens, extra in (("conversations_packed", work / "assistant.zarr", real, ("--batching", "packed")),
                                       ("conversations_padded", work / "assistant.zarr", real, ("--batching", "padded")),
                                       ("windows", windows, len(win) * win.seq_len, ())):
        start = time.perf_counter()
        s = cli("distill", "--logits-store", store, "--model", init, "--epochs", 1, "--batch-size", args.batch_size,
                "--out", work / f"speed_{name}", "--overwrite", *extra)
        out[name] = {"real_tokens": tokens, "train_seconds": s["seconds"],
                     "real_tokens_per_s": round(tokens / s["seconds"], 1),
                     "wall_seconds": round(time.perf_counter() - start, 1)}
    for name in ("conversations_packed", "conversations_padded"):
        out[f"{name}_over_windows"] = round(out[name]["real_tokens_per_s"] / out["windows"]["real_tokens_per_s"], 3)
    return out


if __name__ == "__main__":
    main()
