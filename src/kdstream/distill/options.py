"""distill's options: one frozen dataclass, validated when built; its flags are generated from it
(kdstream.cli.options). Apart from trainer.py so that the run's state and checkpoints can name it
without importing the recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

from kdstream.distill.cross_tokenizer import CROSS_DEFAULTS, CROSS_MODES
from kdstream.distill.loss_names import CE_SAMPLED, HARD, KD_LOSSES, TAILS
from kdstream.errors import KdError
from kdstream.options import check_device, corpus_option, device_option, option, require
from kdstream.text.align import EXACT_ROWS, VOCAB_MAPS
from kdstream.text.chat import ChatOptions

LOSSES = ("ce", *KD_LOSSES, CE_SAMPLED, HARD)
PRECISIONS = ("auto", "fp32", "bf16")


def parse_loss_chunk(value) -> int | str | None:
    """--loss-chunk as typed: "auto", 0 (the plain path: None) or a number of positions."""
    if value is None or str(value).strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise KdError(f"--loss-chunk {value!r}: pass auto, a number of positions, or 0 for the plain path") from None
    return n or None


@dataclass(frozen=True)
class DistillOptions:
    """Train a student from a teacher's logit store (or a CE model from a store/dataset)."""

    model: str = option(help="Student: HF dir (weights → fine-tune; config only → random init) or config .json.")
    out: str = option(help="Checkpoint directory to write.")
    logits_store: str | None = option(None, "Teacher store (path or URL) to train from: one store, or several "
                                               "from one teacher and tokenizer, comma-separated (read as one; a "
                                               "comma that is part of a path: \\,).")
    # tokenized with the model's tokenizer
    dataset: str | None = option(None, "Text or a chat dataset to train on with --loss ce (e.g. the teacher; "
                                       "chat: on the assistant targets, as a conversation store), or text with "
                                       "--teacher (online KD).")
    teacher: str | None = option(None, "Online dense KD instead of a store: this teacher (HF dir, the student's "
                                       "tokenizer) runs in the training process on --dataset and the loss covers "
                                       "the full vocabulary.")
    loss: str = option("forward_kl", "ce | forward_kl | reverse_kl | jsd | ce_sampled (a sampled store: CE "
                                     "against its draws, no temperature) | hard (CE on the teacher's top-1 token "
                                     "at each stored position)")
    temperature: float = option(2.0, "Softmax temperature of teacher and student in KD losses.")
    alpha_ce: float | None = option(None, "Weight of CE mixed into KD. Default: 0; "
                                          f"{CROSS_DEFAULTS['alpha_ce']} for a student whose tokenizer differs "
                                          "from the store's (cross-tokenizer runs only).")
    tail: str = option("bucket", "bucket (leftover mass as one class) | renormalize (top-k only)")
    beta: float = option(0.5, "JSD mixing weight.")
    epochs: int = option(4, "Passes over the training examples.")
    batch_size: int = option(16, "Examples per micro-batch (per rank).")
    lr: float = option(5e-5, "Peak learning rate (AdamW; linear warmup, then cosine decay to 0).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_ratio: float = option(0.03, "Share of the steps spent warming the learning rate up.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    seed: int = option(0, "Seed of initialization and data order.")
    tokenizer: str | None = option(None, "Tokenizer directory (default: the model's).")
    seq_len: int = option(256, "With --dataset only (a store fixes its own).")
    text_field: str = corpus_option("text_field")
    split: str = corpus_option("split")
    max_examples: int | None = option(None, "Train on only the first N examples (a store's first N rows; "
                                                  "--eval-examples are taken from them).")
    shuffle_block: int = option(64, "Rows per contiguous read: the unit of shuffling.")
    # packed wastes no rows when lengths vary (the measurement: docs/conversations.md#measured)
    batching: str = option("packed", "A conversation store's batches: packed (several conversations per sequence, "
                                     "positions restarting, no attention across them) | padded (one per row).")
    # None (typed as 0): plain full-logits path; the memory bound is fused_head.auto_chunk's
    loss_chunk: int | str | None = option("auto", "Positions per chunk of the fused output layer + loss (bounds "
                                                  "the logits' memory); auto = a chunk's fp32 logits within 64 MiB; "
                                                  "0 = plain full-logits path.", parse=parse_loss_chunk)
    exclude: str | None = option(None, "File of example ids (one per line) to skip.")
    cross_tokenizer: str = option("auto", "A student whose tokenizer differs from the store's: alm (chunk "
                                          "likelihood matching) | exact (top-k on identical tokens) | alm+exact; "
                                          f"auto = {CROSS_DEFAULTS['mode']} when the tokenizers differ.")
    exact_map: str = option(CROSS_DEFAULTS["exact_map"], "How --cross-tokenizer exact maps the teacher's top-k "
                                                         "to student tokens: identical (same bytes; the rest of "
                                                         "the mass joins the tail) | prefix (else the student's "
                                                         "longest token that begins it: all the top-k is used).")
    exact_rows: str = option(CROSS_DEFAULTS["exact_rows"], "Which student positions --cross-tokenizer exact "
                                                           "trains on the teacher's top-k: aligned (both next "
                                                           "tokens start at one byte) | same_token (both next "
                                                           "tokens are the same bytes; CE at the other positions).")
    alm_temperature: float | None = option(None, "ALM's binarisation temperature tau (a chunk's likelihood P "
                                                 "read as Bernoulli(P^(1/tau))); the ALM term is scaled by tau. "
                                                 + ("Default: --temperature" if CROSS_DEFAULTS["alm_temperature"] is None
                                                    else f"Default: {CROSS_DEFAULTS['alm_temperature']:g}")
                                                 + " (tokenkit uses 100).")
    teacher_tokenizer: str | None = option(None, "The store's tokenizer (a directory), for a student of another "
                                                 "tokenizer; default: the one the store carries (stores written "
                                                 "before stores carried it need this flag).")
    student_chat_template: str | None = option(None, "A student of another tokenizer on a conversation store: the "
                                                     "Jinja chat template it renders each conversation with "
                                                     "(default: its tokenizer's own).")
    checkpoint_every: int | None = option(None, "Save a resumable checkpoint every N steps.")
    resume: bool = option(False, "Continue an interrupted run from its latest checkpoint in --out.")
    overwrite: bool = option(False, "Replace an existing checkpoint directory.")
    grad_accum: int = option(1, "Micro-batches per optimizer step (per rank): less memory, same update.")
    precision: str = option("auto", "auto (bf16 autocast on a CUDA device that supports it, else fp32) | fp32 | bf16")
    device: str = device_option("the student trains")
    fsdp: bool = option(False, "Under torchrun: shard weights, gradients and optimizer state (FSDP2).")
    eval_examples: int = option(0, "Hold out the last N (non-excluded) examples and report their loss.")
    eval_every: int | None = option(None, "Held-out eval every N steps (default: at the end).")
    loader_workers: int = option(0, "DataLoader processes reading the store (0: a background thread).")
    prefetch: int = option(2, "Batches read ahead (per worker).")
    # so that corruption stops the run before any training time is spent
    verify_store: bool = option(True, "Decode every chunk before step 0 so a corrupt store stops the run at once.")
    tensorboard: bool = option(True, "Also write TensorBoard events (when tensorboard is installed).")
    chat: ChatOptions = field(default_factory=ChatOptions)  # --dataset holding conversations

    def __post_init__(self) -> None:
        require((self.logits_store is None) != (self.dataset is None),
                "pass exactly one of --logits-store STORE or --dataset DATA")
        require(self.loss in LOSSES, f"--loss {self.loss} is unknown: choose one of {', '.join(LOSSES)}")
        require(self.loss == "ce" or self.logits_store is not None or self.teacher is not None,
                f"--loss {self.loss} needs teacher targets: pass --logits-store or --teacher (or use --loss ce)")
        require(self.cross_tokenizer in ("auto", *CROSS_MODES),
                f"--cross-tokenizer {self.cross_tokenizer} is unknown: choose auto, {', '.join(CROSS_MODES)}")
        require(self.cross_tokenizer == "auto" or (self.logits_store is not None and self.loss in KD_LOSSES),
                f"--cross-tokenizer {self.cross_tokenizer} needs --logits-store and --loss {' | '.join(KD_LOSSES)}")
        require(self.teacher is None or self.dataset is not None,
                "--teacher runs the teacher online on text: pass --dataset DATA (not --logits-store)")
        require(self.teacher is None or self.loss in KD_LOSSES,
                f"--teacher with --loss {self.loss}: online KD takes {' | '.join(KD_LOSSES)}")
        require(self.tail in TAILS, f"--tail {self.tail} is unknown: choose one of {', '.join(TAILS)}")
        require(self.temperature > 0, f"--temperature {self.temperature} must be > 0")
        require(self.exact_map in VOCAB_MAPS, f"--exact-map {self.exact_map} is unknown: choose "
                                              f"{' | '.join(VOCAB_MAPS)}")
        require(self.exact_rows in EXACT_ROWS, f"--exact-rows {self.exact_rows} is unknown: choose "
                                               f"{' | '.join(EXACT_ROWS)}")
        require(self.alm_temperature is None or self.alm_temperature > 0,
                f"--alm-temperature {self.alm_temperature} must be > 0")
        require(self.alpha_ce is None or 0.0 <= self.alpha_ce <= 1.0, f"--alpha-ce {self.alpha_ce} must be in [0, 1]")
        require(0.0 <= self.beta <= 1.0, f"--beta {self.beta} must be in [0, 1]")
        require(self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be at least 1")
        require(self.lr > 0, f"--lr {self.lr} must be > 0")
        require(0.0 <= self.warmup_ratio < 1.0, f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        require(self.shuffle_block >= 1, "--shuffle-block must be at least 1")
        require(self.batching in ("packed", "padded"), f"--batching {self.batching!r} is not one of packed, padded")
        require(self.loss_chunk in (None, "auto") or (isinstance(self.loss_chunk, int) and self.loss_chunk >= 1),
                f"--loss-chunk {self.loss_chunk!r}: pass auto, a number of positions >= 1, or 0 for the plain path")
        require(self.checkpoint_every is None or self.checkpoint_every >= 1, "--checkpoint-every must be at least 1")
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other: pick one")
        require(self.grad_accum >= 1, "--grad-accum must be at least 1")
        require(self.precision in PRECISIONS, f"--precision {self.precision} is unknown: choose one of {', '.join(PRECISIONS)}")
        check_device(self.device)
        require(self.eval_examples >= 0, "--eval-examples must be >= 0")
        require(self.eval_every is None or self.eval_every >= 1,
                f"--eval-every {self.eval_every} must be at least 1 (steps between evaluations); leave it out to "
                "evaluate at the end only")
        require(self.eval_every is None or self.eval_examples > 0,
                "--eval-every needs --eval-examples N (the held-out examples to evaluate)")
        require(self.loader_workers >= 0 and self.prefetch >= 0, "--loader-workers and --prefetch must be >= 0")
        require(self.dataset is not None or self.chat == ChatOptions(),
                "--format, --chat-template, --train-on and --on-long read a --dataset: a store's examples are fixed "
                "when it is written; drop them")
