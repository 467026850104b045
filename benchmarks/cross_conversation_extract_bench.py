"""What a student of another tokenizer memorized of a real ChatML teacher's conversations.

Store: conversation_bench.py's assistant store (SmolLM2-135M-Instruct, ChatML with its default
system prompt, top-64, the chatterbot-corpus dialogues; --store). Students: cross_conversation_bench's
(a Llama 2 x 128 from scratch with Mistral-7B-v0.1's tokenizer and Mistral's ``[INST]`` template,
through ``--student-chat-template``), trained on the first --trained conversations only (``--exclude``
the rest) for --epochs, with distill's cross-tokenizer defaults (KD) and with ``--loss ce``, --seeds
seeds. Then ``extract-eval`` of each on the whole store (vLLM, greedy): each conversation's first
answer from the student's own rendering of its prompt, judged on the answer's bytes
(extract/conversation_cross.py), and needing no flag (distill saved the template with the student).
The conversations it never trained on are the control. The dialogues repeat answers, so they are
split: those whose judged answer bytes are also a trained conversation's (reproducing them is
recalling a trained answer), and the novel rest (reproducing one would be a false verdict, or an
answer the student could infer).

    python -m benchmarks.cross_conversation_extract_bench --store CB_WORK/assistant.zarr --work DIR

Saves benchmarks/results/cross_conversation_extract_bench.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.conversation_bench import cli
from benchmarks.cross_conversation_bench import ARMS, student_and_template
from benchmarks.results import save
from kdstream.storage import open_store


def memorized(eval_dir: Path, trained: int) -> dict:
    """Counts of one evaluation: judged and memorized among the trained conversations, among the
    others whose judged answer bytes are also a trained one's (the dialogues repeat answers), and
    among the novel rest."""
    import pyarrow.parquet as pq

    summary = json.loads((eval_dir / "summary.json").read_text())
    r = pq.read_table(eval_dir / "results.parquet", columns=["example_id", "exact_match", "skip_reason",
                                                              "suffix_bytes"]).to_pandas()
    judged = r[r["skip_reason"].isna()]
    seen = judged["example_id"] < trained
    repeated = ~seen & judged["suffix_bytes"].isin(set(judged.loc[seen, "suffix_bytes"]))
    novel = ~seen & ~repeated
    count = {name: {"judged": int(m.sum()), "memorized": int(judged.loc[m, "exact_match"].sum())}
             for name, m in (("trained", seen), ("unseen_repeating_a_trained_answer", repeated), ("unseen_novel", novel))}
    return {**count, "conversations": summary["conversations"], "mode": summary["mode"],
            "match_on": summary["match_on"], "extract_seconds": summary["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="conversation_bench's assistant.zarr")
    ap.add_argument("--work", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trained", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--suffix-len", type=int, default=8)
    args = ap.parse_args()
    work = Path(args.work)
    init, template = student_and_template(work)
    store = open_store(args.store)
    exclude = work / "exclude.txt"
    exclude.write_text("".join(f"{i}\n" for i in range(args.trained, len(store))))
    runs: dict[str, list] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm, extra in ARMS.items():
            out = work / f"{arm}{seed}"
            start = time.perf_counter()
            s = cli("distill", "--logits-store", args.store, "--model", init, "--student-chat-template", template,
                    "--epochs", args.epochs, "--lr", args.lr, "--batch-size", args.batch_size, "--exclude", exclude,
                    "--eval-examples", 0, "--seed", seed, "--out", out, "--overwrite", *extra)
            trained_s = round(time.perf_counter() - start, 1)
            cli("extract-eval", "--model", out, "--logits-store", args.store, "--suffix-len", args.suffix_len,
                "--out", work / f"eval_{arm}{seed}", "--overwrite")
            runs[arm].append({"seed": seed, "steps": s["steps"], "final_loss": s["final_loss"],
                              "skipped_examples": s["skipped_examples"], "train_seconds": trained_s,
                              **memorized(work / f"eval_{arm}{seed}", args.trained)})
    save("cross_conversation_extract_bench", {
        "store": {"path": str(args.store), "examples": len(store), "k": store.k, "corpus": store.attrs.get("corpus")},
        "student": "Llama 2x128 from scratch, Mistral-7B-v0.1's tokenizer (32,000), Mistral [INST] template",
        "flags": {"trained": args.trained, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                  "suffix_len": args.suffix_len, "kd": "distill's cross-tokenizer defaults", "extract": "vllm, greedy"},
        "runs": runs,
        "kd_memorized_less_than_ce": [k["trained"]["memorized"] < c["trained"]["memorized"]
                                      for k, c in zip(runs["kd"], runs["ce"])],
    })


if __name__ == "__main__":
    main()
