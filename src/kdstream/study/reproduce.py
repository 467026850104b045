"""`kdstream reproduce`: the whole study, every seed, then the report beside the paper's table.

    OUT/config.yaml           the resolved StudyConfig (rerun with --config OUT/config.yaml)
    OUT/tokenizer/ OUT/init/  shared by every seed (tiny models: a BPE trained on the corpus)
    OUT/student_tokenizer/    the students' own, trained on the corpus (student_tokenizer: sentencepiece-N)
    OUT/seed-S/               one run of the protocol (protocol.py)
    OUT/study.md study.json canaries.png

A chat dataset runs the same protocol on conversations (study/conversations.py says what changes).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from kdstream.errors import KdError
from kdstream.options import options_dict
from kdstream.outputs import refuse_link
from kdstream.study.config import TINY_ARCHS, StudyConfig


def _init_tiny(directory: Path, arch: dict, seq_len: int, vocab_size: int, tokenizer) -> None:
    """A config-only GPT-NeoX directory (random init at train time, by the trainer's seed)."""
    from transformers import GPTNeoXConfig

    if (directory / "config.json").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    GPTNeoXConfig(
        vocab_size=vocab_size, max_position_embeddings=2 * seq_len,  # room for vLLM's extra token
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **arch,
    ).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def _models(cfg: StudyConfig, out: Path, texts) -> dict[str, str]:
    """{"teacher": dir, "student": dir}: HF directories as given, tiny archs created under OUT/init."""
    from kdstream.model_files import check_model_dir
    from kdstream.study.conversations import holds_conversations, train_chat_tokenizer
    from kdstream.study.student_tokenizer import check_spec, student_tokenizer
    from kdstream.text.tokenizers import load_tokenizer, train_bpe_tokenizer

    tiny = {role: name in TINY_ARCHS for role, name in (("teacher", cfg.teacher_model), ("student", cfg.student_model))}
    check_spec(cfg.student_tokenizer, cfg.student_model, tiny["student"])  # before any tokenizer is trained
    models = {}
    tokenizer = None
    if any(tiny.values()):
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        elif not tiny["teacher"]:
            tokenizer = load_tokenizer(cfg.teacher_model)
        elif (out / "tokenizer" / "tokenizer.json").exists():
            tokenizer = load_tokenizer(out / "tokenizer")
        else:
            print("[study] training a BPE tokenizer on the corpus", file=sys.stderr)
            # saved in a fresh directory renamed at the end: a failed save (disk full) never
            # leaves a tokenizer/ that a rerun would take for finished
            partial = Path(tempfile.mkdtemp(prefix="tokenizer.partial-", dir=out))
            if holds_conversations(cfg.dataset, cfg.split):  # with a chat template (study/conversations.py)
                tokenizer = train_chat_tokenizer(texts(), cfg.tokenizer_vocab, partial)
            else:
                tokenizer = train_bpe_tokenizer(texts(), cfg.tokenizer_vocab, partial)
            partial.rename(out / "tokenizer")
    for role, name in (("teacher", cfg.teacher_model), ("student", cfg.student_model)):
        if tiny[role]:
            tok = tokenizer
            if role == "student" and cfg.student_tokenizer:  # the baseline's and students' own
                tok = student_tokenizer(cfg.student_tokenizer, out, texts)
            _init_tiny(out / "init" / role, TINY_ARCHS[name], cfg.seq_len, len(tok), tok)
            models[role] = str(out / "init" / role)
        else:
            models[role] = str(check_model_dir(name, role))
    return models


def claim_out_dir(root: Path, marker: str, command: str) -> None:
    """Create --out ``root``, refusing a file or a non-empty directory without ``marker`` (the file
    ``command`` writes there first): kdstream never writes into what it did not create."""
    refuse_link(root, "--out")
    if root.exists() and not root.is_dir():
        raise KdError(f"--out {root} is a file: pass a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / marker).is_file():
        raise KdError(f"--out {root} already exists and is not a {command} output: choose another --out "
                      "(kdstream never writes into what it did not create)")
    root.mkdir(parents=True, exist_ok=True)


def resolved_config(cfg: StudyConfig) -> dict:
    """The config as it is saved (YAML-ready: tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options_dict(cfg).items()}


def prepare_study_dir(cfg: StudyConfig, root: Path) -> tuple[dict, dict[str, str], object]:
    """Create (or check, to resume) a study directory: its config.yaml, tokenizer and initial
    models -> (the resolved config, {"teacher": dir, "student": dir}, a cached ``texts()``)."""
    from kdstream.data import load_corpus
    from kdstream.study.conversations import check_conversation_study, conversation_texts, holds_conversations

    chat = holds_conversations(cfg.dataset, cfg.split)
    if chat:
        check_conversation_study(cfg)
    saved = root / "config.yaml"
    claim_out_dir(root, saved.name, "kdstream reproduce")  # config.yaml is written first
    resolved = resolved_config(cfg)
    if saved.exists():
        try:
            before = yaml.safe_load(saved.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise KdError(f"{saved} is not a kdstream reproduce config: choose another --out")
        # arms add students beside the others (study/arms.py): a finished study can gain one
        changed = sorted(k for k in resolved if k not in ("seeds", "first_seed", "arms")
                         and before.get(k) != resolved[k])
        if changed:
            raise KdError(f"{root} holds a study run with other settings ({', '.join(changed)}): "
                          "choose another --out or delete it")
    saved.write_text(yaml.safe_dump(resolved, sort_keys=False))

    cache: dict[str, list[str]] = {}

    def texts() -> list[str]:
        if "t" not in cache:
            cache["t"] = (conversation_texts(cfg.dataset, cfg.split) if chat
                          else load_corpus(cfg.dataset, cfg.text_field, cfg.split).texts)
        return cache["t"]

    return resolved, _models(cfg, root, texts), texts


def run_reproduce(cfg: StudyConfig, out: str) -> dict:
    from kdstream.study.protocol import run_seed
    from kdstream.study.summary import STUDY_MD, write_study_report

    root = Path(out)
    resolved, models, texts = prepare_study_dir(cfg, root)
    figures = [run_seed(cfg, root / f"seed-{s}", s, models, texts) for s in cfg.seed_list]
    result = write_study_report(root, resolved, figures)
    print((root / STUDY_MD).read_text())
    print(f"outputs in {root}/ (study.md, study.json, canaries.png; seed-*/report/ for each seed's plots)")
    return result
