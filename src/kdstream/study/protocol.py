"""One seed of the study: every stage of the paper's protocol as a `kdstream` command, then the
seed's figures (``figures.json``) read back from the stages' outputs, never typed in.

Layout under ``SEED_DIR = OUT/seed-S``::

    corpus.jsonl canaries.jsonl canaries.json   the corpus with canaries planted (if any)
    teacher/ baseline/ student/ student_filtered/   checkpoints (distill)
    teacher.zarr                                 the teacher's store (precompute-logits)
    eval/ROLE/  eval-canaries/ROLE/              extract-eval of every training example / canary
    eval/{teacher,baseline}/features/            their features (extract-eval --features)
    compare/  classify/  report/
    figures.json                                 this seed's numbers for the study report
"""
from __future__ import annotations

import json
from pathlib import Path

from kdstream.study.config import StudyConfig
from kdstream.study.stages import Stages, store_complete

ROLES = ("teacher", "baseline", "student")
FIGURES_FILE = "figures.json"
MIN_CLASS = 5  # examples of each class (student memorized or not) the classifier needs


def run_seed(cfg: StudyConfig, seed_dir: Path, seed: int, init: dict[str, str], corpus_texts,
             calibration: bool = False) -> dict:
    """Run (or resume) every stage for ``seed``; ``init`` = {"teacher": dir, "student": dir} of the
    models to start from; ``corpus_texts()`` gives the corpus documents (for planting canaries).

    ``calibration``: stop after compare (the memorization counts) and skip the canaries' evals,
    returning ``calibration_figures``. The canaries are still planted, so the models train on
    exactly the corpus a full run trains on and give the same counts (same seed)."""
    from dataclasses import replace

    from kdstream.analysis.classify_run import ClassifyRunOptions
    from kdstream.analysis.features_run import FeaturesOptions
    from kdstream.analysis.files import CLASSIFICATION_FILE, COMPARISON_JSON, EXCLUDE_FILE, SUMMARY_FILE
    from kdstream.analysis.report import ReportOptions
    from kdstream.distill.options import DistillOptions
    from kdstream.distill.trainer import DONE_FILE
    from kdstream.engines.vllm import EngineOptions
    from kdstream.errors import KdError
    from kdstream.extract.run import ExtractOptions
    from kdstream.options import command_argv as argv
    from kdstream.precompute.runner import PrecomputeOptions
    from kdstream.study.arms import ARM_LOSS, arm_role
    from kdstream.study.canaries import CANARY_CORPUS, CANARY_FILE, STUDY_CORPUS, build_study_corpus
    from kdstream.study.conversations import holds_conversations
    from kdstream.text.tokenizers import load_tokenizer

    d = seed_dir
    d.mkdir(parents=True, exist_ok=True)
    st = Stages(f"seed {seed}", d / "stage_seconds.json", cfg.train_launcher)
    # a chat dataset: one example per conversation, no canaries (study/conversations.py)
    chat = holds_conversations(cfg.dataset, cfg.split)
    canaries = bool(cfg.canary_counts) and not chat
    if canaries:
        tok = load_tokenizer(init["teacher"])
        st.in_process("plant canaries", (d / CANARY_FILE).exists(),
                      lambda: build_study_corpus(d, corpus_texts(), tok, cfg, seed))
    corpus = (dict(dataset=str(d / STUDY_CORPUS), text_field="text") if canaries
              else dict(dataset=cfg.dataset, text_field=cfg.text_field, split=cfg.split))
    window = dict(seq_len=cfg.seq_len, max_examples=cfg.examples)
    # resume: an interrupted training stage continues from its latest checkpoint (if any)
    train = dict(batch_size=cfg.batch_size, seed=seed, resume=True)
    store = d / "teacher.zarr"
    kd = dict(logits_store=str(store), loss=cfg.loss, temperature=cfg.temperature, epochs=cfg.student_epochs,
              lr=cfg.lr)
    # a student of another tokenizer (student_tokenizer.py): distill picks the cross-tokenizer
    # losses itself (CE on the student's own tokens, KD by --cross-tokenizer); judged on bytes
    cross = _student_tokenizer_differs(init)
    if cross and cfg.arms:  # distill --loss hard trains on the teacher's token ids
        raise KdError(f"arms {', '.join(cfg.arms)} train on the teacher's top-1 token ids, and the students' "
                      "tokenizer differs from the teacher's: drop arms, or use the teacher's tokenizer")
    if cross and cfg.cross_tokenizer:
        kd["cross_tokenizer"] = cfg.cross_tokenizer

    def done(path: Path) -> bool:
        return path.exists()

    def distill(name: str, role: str, opts: DistillOptions) -> None:
        st.run(name, done(d / role / DONE_FILE), argv("distill", opts, cfg.train_args))

    teacher_lr = cfg.teacher_lr if cfg.teacher_lr is not None else cfg.lr
    distill("teacher (CE)", "teacher", DistillOptions(
        model=init["teacher"], out=str(d / "teacher"), loss="ce", epochs=cfg.teacher_epochs, lr=teacher_lr,
        **corpus, **window, **train))
    st.run("precompute", store_complete(store), argv("precompute-logits", PrecomputeOptions(
        model=str(d / "teacher"), out=str(store), top_k=cfg.top_k, engine=EngineOptions(seed=seed),
        **corpus, **window), cfg.precompute_args))
    distill("baseline (CE)", "baseline", DistillOptions(
        model=init["student"], out=str(d / "baseline"), logits_store=str(store), loss="ce",
        epochs=cfg.student_epochs, lr=cfg.lr, **train))
    distill("student (KD)", "student", DistillOptions(model=init["student"], out=str(d / "student"), **kd, **train))

    def evaluation(role: str, features: bool = False) -> ExtractOptions:
        # a conversation's prefix is its prompt, up to the first answer: no prefix length
        prefix = {} if chat else {"prefix_len": cfg.prefix_len}
        return ExtractOptions(model=str(d / role), logits_store=str(store), out=str(d / "eval" / role),
                              suffix_len=cfg.suffix_len, method=cfg.eval_method, backend=cfg.eval_backend,
                              features=features, **prefix)

    # canaries: window i of canaries.jsonl packed at canary length + 1 (EOS) is canary i; the
    # teacher-forced fast path gives greedy decoding's exact-match verdict in one pass
    def canary_evaluation(role: str) -> ExtractOptions:
        return ExtractOptions(model=str(d / role), dataset=str(d / CANARY_CORPUS), out=str(d / "eval-canaries" / role),
                              seq_len=cfg.canary_tokens + 1, prefix_len=cfg.canary_prefix_len,
                              suffix_len=cfg.canary_suffix_len, method="fast", backend="hf")

    def evaluate_model(role: str, features: bool = False) -> None:
        if cross and role != "teacher":
            return evaluate_across(role, features)
        st.run(f"extract-eval {role}", done(d / "eval" / role / SUMMARY_FILE),
               argv("extract-eval", evaluation(role, features), cfg.eval_args))
        if canaries and not calibration:
            st.run(f"canaries {role}", done(d / "eval-canaries" / role / SUMMARY_FILE),
                   argv("extract-eval", canary_evaluation(role)))

    def evaluate_across(role: str, features: bool) -> None:
        """A model of another tokenizer: greedy decoding judged on the suffix's bytes (the windows
        cut in the teacher's tokens); its features scored across tokenizers, where --features would go."""
        st.run(f"extract-eval {role}", done(d / "eval" / role / SUMMARY_FILE),
               argv("extract-eval", replace(evaluation(role), method="generate"), cfg.eval_args))
        if features:
            st.run(f"features {role}", done(d / "eval" / role / "features" / SUMMARY_FILE),
                   argv("features", FeaturesOptions(model=str(d / role), logits_store=str(store),
                                                    out=str(d / "eval" / role / "features"),
                                                    prefix_len=cfg.prefix_len, suffix_len=cfg.suffix_len)))
        if canaries and not calibration:  # canaries.jsonl packed with the teacher's tokenizer: window i is canary i
            across = replace(canary_evaluation(role), method="generate", teacher_tokenizer=init["teacher"])
            st.run(f"canaries {role}", done(d / "eval-canaries" / role / SUMMARY_FILE), argv("extract-eval", across))

    # the classifier's inputs: features of the teacher and the baseline (extract-eval --features)
    for role in ROLES:
        evaluate_model(role, features=role != "student")
    features = dict(teacher_features=str(d / "eval" / "teacher" / "features"),
                    baseline_features=str(d / "eval" / "baseline" / "features"))
    evals = [str(d / "eval" / role) for role in ROLES]
    st.run("compare", done(d / "compare" / COMPARISON_JSON),
           ["compare", *evals, "--out", str(d / "compare"), "--teacher-features", features["teacher_features"],
            "--baseline-features", features["baseline_features"]], quiet=True)

    cmp = json.loads((d / "compare" / COMPARISON_JSON).read_text())
    if calibration:
        return calibration_figures(cmp, st.seconds)
    for arm in cfg.arms:  # ablation arms (arms.py): the student's store, data order, steps and seed
        role = arm_role(arm)
        distill(f"{role} ({arm})", role, DistillOptions(model=init["student"], out=str(d / role),
                                                        **{**kd, "loss": ARM_LOSS[arm]}, **train))
        st.run(f"extract-eval {role}", done(d / "eval" / role / SUMMARY_FILE),
               argv("extract-eval", evaluation(role), cfg.eval_args))
    positives = cmp["memorized"]["student"]
    # repeated stratified 70/30 splits and 5-fold CV need a few of each class; fewer: not testable
    fit = min(positives, cmp["examples"] - positives) >= MIN_CLASS
    if fit:
        st.run("classify + filter", done(d / "classify" / CLASSIFICATION_FILE), argv("classify", ClassifyRunOptions(
            student_eval=str(d / "eval" / "student"), out=str(d / "classify"), seed=seed,
            repeats=cfg.classify_repeats, filter=True, target_recall=cfg.target_recall, **features)))
        # a classifier that flags every example leaves nothing to re-distill on: the filter's
        # finding is then not testable (study/paper.py), not a failed stage
        if len(excluded_ids(d)) < cmp["examples"]:
            distill("student (KD, filtered)", "student_filtered", DistillOptions(
                model=init["student"], out=str(d / "student_filtered"), exclude=str(d / "classify" / EXCLUDE_FILE),
                **kd, **train))
            evaluate_model("student_filtered")
    report = ReportOptions(**{f"{role}_eval": str(d / "eval" / role) for role in ROLES}, out=str(d / "report"),
                           classify=str(d / "classify") if fit else None, **features)
    st.run("report", False, argv("report", report))  # cheap; rebuilt from what exists
    figures = seed_figures(d, cfg, fit)
    if cross:  # only then: a same-tokenizer study's figures stay as they were
        from kdstream.study.student_tokenizer import across_facts

        figures["student_tokenizer"] = across_facts(d, init)
    if chat:  # only then: a text study's figures stay as they were
        figures["conversations"] = True
    figures["stage_seconds"] = st.seconds
    tmp = d / (FIGURES_FILE + ".partial")
    tmp.write_text(json.dumps(figures, indent=2))
    tmp.replace(d / FIGURES_FILE)
    return figures


def _student_tokenizer_differs(init: dict[str, str]) -> bool:
    from kdstream.errors import KdError
    from kdstream.study.student_tokenizer import tokenizers_differ

    try:
        return tokenizers_differ(init["teacher"], init["student"])
    except (KdError, OSError, ValueError):  # a directory without tokenizer files: distill uses the teacher's
        return False


def calibration_figures(cmp: dict, seconds: dict[str, float]) -> dict:
    """What a calibration point reports: examples, memorized counts and rates, stage seconds."""
    return {"examples": cmp["examples"], "memorized": cmp["memorized"], "rate": cmp["rate"],
            "stage_seconds": dict(seconds)}


def _at_fork(cmp: dict, group: str) -> int | None:
    forks = cmp.get("forks") or {}
    return forks[group]["at_fork"] if group in forks else None


def excluded_ids(d: Path) -> frozenset[int]:
    """The example ids the seed's classifier flagged (``classify --filter``'s exclude file), read
    as ``distill --exclude`` reads them."""
    from kdstream.analysis.files import EXCLUDE_FILE
    from kdstream.distill.sources import read_exclude

    return read_exclude(str(d / "classify" / EXCLUDE_FILE))


def seed_figures(d: Path, cfg: StudyConfig, classified: bool) -> dict:
    """The numbers the study report tabulates, read from one seed directory's outputs."""
    from kdstream.analysis.compare import memorized_ids
    from kdstream.analysis.files import CLASSIFICATION_FILE, COMPARISON_JSON, RESULTS_FILE
    from kdstream.study.canaries import CANARY_FILE, canary_rates
    from kdstream.study.intervals import window_patterns

    cmp = json.loads((d / "compare" / COMPARISON_JSON).read_text())
    t, b, s = (memorized_ids(d / "eval" / role)[0] for role in ROLES)
    out: dict = {
        "examples": cmp["examples"],
        "memorized": cmp["memorized"],
        "rate": cmp["rate"],
        "student_over_baseline": cmp["student_over_baseline"],
        "teacher_only": cmp["teacher_only"],
        "teacher_only_inherited": cmp["teacher_only_inherited_by_student"],
        # lost by the baseline at a fork between near-duplicate windows (analysis/forks.py);
        # None where not tested (or a comparison written before the test existed)
        "teacher_only_at_fork": _at_fork(cmp, "teacher_only"),
        "teacher_only_inherited_at_fork": _at_fork(cmp, "inherited"),
        "student_also_by_both": len(s & t & b),
        "classifier": None,
        "filter": None,
        "canaries": None,
        "windows": None,
    }
    memorized = {"teacher": t, "baseline": b, "student": s}
    if classified:
        cls = json.loads((d / "classify" / CLASSIFICATION_FILE).read_text())
        out["classifier"] = {"auc": cls["auc"], "coefficients": {k: v["mean"] for k, v in cls["coefficients"].items()},
                             "positives": cls.get("positives"), "precision": cls["precision"], "recall": cls["recall"],
                             "repeats": cls.get("repeat_values")}  # every split's AUC and coefficients
        excluded = excluded_ids(d)
        if len(excluded) < cmp["examples"]:  # else no filtered student was trained (run_seed)
            after, _ = memorized_ids(d / "eval" / "student_filtered")
            out["filter"] = {
                "excluded": len(excluded),
                "expected_recall": cls["filter"]["expected_recall"],
                "student_memorized_before": len(s),
                "student_memorized_after": len(after),
                "after_among_kept": len(after - excluded),
                "before_among_kept": len(s - excluded),
            }
            memorized["student_filtered"] = after
    if cfg.arms:
        from kdstream.study.arms import arm_figures

        out["arms"], found = arm_figures(d, cfg.arms, memorized)
        memorized.update(found)
    out["windows"] = window_patterns(memorized, cmp["examples"])  # the findings' bootstrap (intervals.py)
    if (d / CANARY_FILE).exists():  # planted (none in conversations)
        roles = [r for r in (*ROLES, "student_filtered") if (d / "eval-canaries" / r / RESULTS_FILE).exists()]
        out["canaries"] = {r: {str(c): v for c, v in canary_rates(d / CANARY_FILE, d / "eval-canaries" / r /
                                                                   RESULTS_FILE).items()} for r in roles}
    return out
