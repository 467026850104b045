"""A student of another tokenizer on a real ChatML teacher's conversations.

Store: conversation_bench.py's assistant store (SmolLM2-135M-Instruct, its ChatML template with the
default system prompt, top-64, the chatterbot-corpus dialogues; --store). Student: a small Llama
(2 x 128, from scratch) with Mistral-7B-v0.1's SentencePiece tokenizer (cross_tokenizer_pairs.py's),
rendering each conversation with Mistral's ``[INST]`` template, which that tokenizer does not ship
(``distill --student-chat-template``). Trained with distill's cross-tokenizer defaults (KD) and with
``--loss ce`` (its own tokens of the same answers), --seeds seeds, at conversation_bench's flags;
held-out bits per byte over the last --held-out conversations' answers: the same answers' bytes
that conversation_bench's same-tokenizer students are scored on.

    python -m benchmarks.cross_conversation_bench --store CB_WORK/assistant.zarr --work DIR [--seeds 3]

Saves benchmarks/results/cross_conversation_bench.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.conversation_bench import cli
from benchmarks.results import save
from benchmarks.smollm2 import smollm2_dir
from kdstream.storage import open_store

# Mistral-7B-Instruct-v0.1's template (user / assistant turns; the dialogues have no system turn)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
ARMS = {"kd": [], "ce": ["--loss", "ce"]}


def student_init(work: Path) -> Path:
    """Config + Mistral's tokenizer of a small Llama (distill initializes the weights by its seed)."""
    from transformers import AutoConfig

    from benchmarks.cross_tokenizer_pairs import tokenizer

    out = work / "student_init"
    tok = tokenizer("mistral", work)
    config = AutoConfig.from_pretrained(str(smollm2_dir()))
    config.update({"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 2, "head_dim": 64, "vocab_size": len(tok),
                   "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                   "pad_token_id": None, "tie_word_embeddings": True})
    config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def student_and_template(work: Path) -> tuple[Path, Path]:
    """The student's config + tokenizer and Mistral's template file, under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    template = work / "mistral.jinja"
    template.write_text(MISTRAL_TEMPLATE)
    return student_init(work), template


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="conversation_bench's assistant.zarr")
    ap.add_argument("--work", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--name", default="cross_conversation_bench")
    args = ap.parse_args()
    work = Path(args.work)
    init, template = student_and_template(work)
    runs: dict[str, list] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm, extra in ARMS.items():
            out = work / f"{arm}{seed}"
            start = time.perf_counter()
            s = cli("distill", "--logits-store", args.store, "--model", init, "--student-chat-template", template,
                    "--epochs", args.epochs, "--lr", args.lr, "--batch-size", args.batch_size,
                    "--eval-examples", args.held_out, "--seed", seed, "--out", out, "--overwrite", *extra)
            runs[arm].append({"seed": seed, "held_out_bits_per_byte": s["held_out_bits_per_byte"],
                              "held_out_tokens": s["held_out_tokens"], "cross_tokenizer": s["cross_tokenizer"],
                              "skipped_examples": s["skipped_examples"], "steps": s["steps"],
                              "tokens_per_s": s.get("tokens_per_s"), "seconds": round(time.perf_counter() - start, 1)})
    kd = [r["held_out_bits_per_byte"] for r in runs["kd"]]
    ce = [r["held_out_bits_per_byte"] for r in runs["ce"]]
    store = open_store(args.store)
    save(args.name, {"store": {"path": str(args.store), "examples": len(store), "seq_len": store.seq_len, "k": store.k,
                               "corpus": store.attrs.get("corpus")},
                     "student": "Llama 2x128 from scratch, Mistral-7B-v0.1's tokenizer (32,000), Mistral [INST] template",
                     "flags": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                               "held_out": args.held_out, "kd": "distill's cross-tokenizer defaults"},
                     "template": MISTRAL_TEMPLATE, "runs": runs,
                     "kd_better_than_ce": [k < c for k, c in zip(kd, ce)]})


if __name__ == "__main__":
    main()
