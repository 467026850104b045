"""What `kdstream reproduce` runs: one typed config, embedded defaults = the 2-core miniature.

``configs/study.yaml`` holds the paper's real setting (Pythia-12B teacher, Pythia-1.4B baseline and
student, FineWeb); any field can be set there or on the command line. ``teacher_model`` and
``student_model`` name a HF directory (pretrained weights are fine-tuned) or one of ``TINY_ARCHS``
(a config-only GPT-NeoX initialized at random by the trainer's seed).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from kdstream.errors import KdError
from kdstream.options import check_value, load_yaml_options, option, require

ARMS = ("hard",)  # study/arms.py

# Sized for a 2-core CPU: big enough to memorize, small enough to train in minutes. head_dim 64
# (vLLM's CPU attention rejects 16). The teacher is the larger model, as in the paper.
TINY_ARCHS = {
    "tiny-teacher": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "tiny-student": dict(num_hidden_layers=3, hidden_size=192, num_attention_heads=3, intermediate_size=768),
    # for calibration (kdstream reproduce --calibrate): ~8x tiny-student's non-embedding weights
    # (10.6M vs 1.3M), the paper's teacher/student ratio (12B / 1.4B)
    "small-teacher": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    # for the reduced study in the tests
    "micro-teacher": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=256),
    "micro-student": dict(num_hidden_layers=1, hidden_size=128, num_attention_heads=2, intermediate_size=256),
}


@dataclass(frozen=True)
class StudyConfig:
    """The paper's protocol: teacher CE → baseline CE → teacher store → student KD → extract-eval
    (+ features) → compare → classify → filter → re-distill → extract-eval → report."""

    # data: the first `examples` windows of `seq_len` tokens of the corpus (canaries planted in it).
    # The calibrated default (kdstream reproduce --calibrate; the sweep and its figures: docs/study.md):
    # the standard-library docstrings with the installed dependencies' license texts as 30% of the
    # characters (natural duplication: whole texts with their natural copy counts), all windows of
    # 64 tokens. There the regime is set by the passes over the data and the step size, not by the
    # model size, so the teacher gets the baseline's 4 epochs (paper: 3) at its own lr (teacher_lr)
    # to memorize more than it. More license text makes more of the teacher's extra recall forks
    # between near-duplicate licenses (texts that share a phrase, then part), which the student
    # inherits; at 30% it inherits about as little as in the paper.
    dataset: str = "demo+licenses:0.3"
    text_field: str = "text"
    split: str = "train"
    examples: int = option(4000, "Training examples (windows of seq_len tokens); fewer when the corpus runs out.")
    seq_len: int = 64
    tokenizer: str | None = None  # None: the teacher's (a HF dir) or, for tiny models, BPE trained on the corpus
    tokenizer_vocab: int = 4096  # size of that trained BPE vocabulary
    # the baseline's and students' tokenizer (study/student_tokenizer.py), tiny students only:
    # None = the teacher's; a tokenizer directory; or sentencepiece-N / bpe-N trained on the corpus
    student_tokenizer: str | None = None
    cross_tokenizer: str | None = None  # the student's distill --cross-tokenizer across tokenizers (None: auto)
    # models and training (paper: 3 teacher epochs, 4 baseline / student epochs, T = 2)
    teacher_model: str = "tiny-teacher"
    student_model: str = "tiny-student"
    teacher_epochs: int = option(4, "Epochs of the teacher (CE).")
    student_epochs: int = option(4, "Epochs of baseline, student and filtered student.")
    lr: float = 1e-3  # the baseline, the student and the filtered student
    # the teacher's own (None: lr): the calibrated value that orders teacher > baseline > student,
    # as in the paper (docs/study.md)
    teacher_lr: float | None = 7e-4
    batch_size: int = 8
    temperature: float = 2.0
    loss: str = "forward_kl"
    top_k: int = 16
    # extraction: greedy prefix -> suffix on every training example, vLLM by default
    prefix_len: int = 32
    suffix_len: int = 32
    eval_method: str = option("generate", "generate (vLLM greedy, the reference) | fast | both")
    eval_backend: str = option("vllm", "vllm | hf")
    # canaries (Secret Sharer): random-word sequences planted `count` times each
    canary_counts: tuple[int, ...] = (1, 2, 4, 8, 16)
    canaries_per_count: int = 2
    canary_prefix_len: int = 16
    canary_suffix_len: int = 16
    # classifier and filter
    classify_repeats: int = 100
    target_recall: float = 0.95
    # extra flags per stage, for the GPU setting (e.g. --precision bf16, --dtype bfloat16)
    # --loss-chunk 0: with a 4k vocabulary the full logits are small, and the fused loss's
    # recompute only slows a tiny KD epoch on CPU
    train_args: tuple[str, ...] = ("--loss-chunk", "0")
    train_launcher: tuple[str, ...] = ()  # e.g. [torchrun, --nproc_per_node, "8"]: distill runs under it
    # vLLM's dtype "auto" runs fp32 checkpoints in 16 bits: the tiny models are scored in fp32
    precompute_args: tuple[str, ...] = ("--dtype", "float32")
    eval_args: tuple[str, ...] = ("--dtype", "float32")
    # ablation arms beside the KL student (study/arms.py), each a student trained from the same
    # store in the same data order, steps and seed: "hard" = the teacher's top-1 token (--loss hard)
    arms: tuple[str, ...] = ()
    seeds: int = option(1, "Run the study for N seeds; figures become mean ± sd.")
    first_seed: int = option(0, "Seeds run from this one.")

    def __post_init__(self) -> None:
        require(self.examples >= 4, f"examples {self.examples} must be at least 4")
        require(self.prefix_len >= 1 and self.suffix_len >= 1, "prefix_len and suffix_len must be at least 1")
        require(self.prefix_len + self.suffix_len <= self.seq_len,
                f"prefix_len + suffix_len ({self.prefix_len + self.suffix_len}) must fit in seq_len {self.seq_len}")
        require(min(self.teacher_epochs, self.student_epochs) >= 1, "epochs must be at least 1")
        require(self.seeds >= 1, f"seeds {self.seeds} must be at least 1")
        require(self.lr > 0 and (self.teacher_lr is None or self.teacher_lr > 0), "lr and teacher_lr must be positive")
        require(all(int(c) >= 1 for c in self.canary_counts), "canary_counts must be positive duplication counts")
        require(self.canaries_per_count >= 1, "canaries_per_count must be at least 1")
        require(self.canary_prefix_len >= 1 and self.canary_suffix_len >= 1, "canary prefix/suffix lengths must be >= 1")
        require(self.eval_method in ("generate", "fast", "both"), f"eval_method {self.eval_method!r}: generate | fast | both")
        require(self.eval_backend in ("vllm", "hf"), f"eval_backend {self.eval_backend!r}: vllm | hf")
        require(0 < self.target_recall <= 1, f"target_recall {self.target_recall} must be in (0, 1]")
        require(set(self.arms) <= set(ARMS) and len(set(self.arms)) == len(self.arms),
                f"arms {list(self.arms)}: each of {', '.join(ARMS)} at most once")
        require(self.cross_tokenizer in (None, "auto", "alm", "exact", "alm+exact"),
                f"cross_tokenizer {self.cross_tokenizer!r}: auto | alm | exact | alm+exact")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def canary_tokens(self) -> int:
        return self.canary_prefix_len + self.canary_suffix_len


_FIELD_TYPES = {f.name: f.type for f in fields(StudyConfig)}
_TUPLES = {name for name, kind in _FIELD_TYPES.items() if str(kind).startswith("tuple")}


def load_study_config(path: str | None, overrides: dict) -> StudyConfig:
    """Embedded defaults, then the YAML file (if any), then the command line's non-None values."""
    values = load_yaml_options(path) if path else {}
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KdError(f"config {path} has unknown keys {', '.join(unknown)}: the keys are the fields of "
                      "kdstream.study.config.StudyConfig (see configs/study.yaml)")
    for key, value in values.items():
        kind = str(_FIELD_TYPES[key])
        if key in _TUPLES:  # a list, or the flags' comma text
            check_value(key, value, "list | str", f"config {path}")
            item_kind = kind.removeprefix("tuple[").split(",")[0]
            for item in value if isinstance(value, list) else ():
                check_value(f"{key} item", item, item_kind, f"config {path}")
        else:
            check_value(key, value, kind, f"config {path}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name in _TUPLES & set(values):
        v = values[name]
        values[name] = tuple(v) if isinstance(v, (list, tuple)) else tuple(str(v).replace(",", " ").split())
    if "canary_counts" in values:
        try:
            values["canary_counts"] = tuple(int(c) for c in values["canary_counts"])
        except ValueError:
            raise KdError(f"canary_counts {values['canary_counts']} must be integers, e.g. 1,2,4,8,16") from None
    try:
        return StudyConfig(**values)
    except TypeError as exc:
        raise KdError(f"config {path}: {exc}") from None
