"""What distill trains on: a logit store (checked against the student before any step) or a
packed corpus; plus the exclude list and the held-out split."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdstream.distill.loss_names import KD_LOSSES
from kdstream.errors import KdError


def read_exclude(path: str | None) -> frozenset[int]:
    if path is None:
        return frozenset()
    p = Path(path)
    if not p.is_file():
        raise KdError(f"exclude list {p} not found: pass a file of example ids, one per line")
    try:
        return frozenset(int(line) for line in p.read_text().split())
    except ValueError:
        raise KdError(f"exclude list {p} must hold integer example ids, one per line") from None


def check_store_matches(store, tokenizer, net=None) -> None:
    """Refuse, before any step, a student that cannot be trained on this store's ids (``net``
    None: the tokenizer only)."""
    from kdstream.text.match import recorded_fingerprint, tokenizers_match
    from kdstream.text.tokenizers import tokenizer_fingerprint

    mine, theirs = tokenizer_fingerprint(tokenizer), recorded_fingerprint(store)
    if not tokenizers_match(mine, theirs):
        raise KdError(
            f"the student's tokenizer (vocab {mine['vocab_size']}, sha256 {mine['sha256'][:12]}) differs from the "
            f"store's (vocab {theirs.get('vocab_size')}, sha256 {str(theirs.get('sha256'))[:12]}): use a student "
            "that shares the teacher's tokenizer, or pass --tokenizer with the teacher's"
        )
    if net is not None and net.config.vocab_size < store.vocab_size:
        raise KdError(
            f"the student's output layer has {net.config.vocab_size} classes but the store's ids go up to "
            f"{store.vocab_size}: build the student with vocab_size >= {store.vocab_size}"
        )


def load_online_teacher(path: str, tokenizer, net, device):
    """The teacher of ``distill --teacher``: fp32 weights (autocast applies as to the student), in
    eval mode, frozen, on the student's device; refused unless it shares the student's tokenizer
    and output size (dense KD compares the two distributions class by class) and computes its
    logits as lm_head(last hidden state) (the loss applies the head itself, chunk by chunk)."""
    from kdstream.engines.hf import load_causal_lm
    from kdstream.model_files import check_model_dir, logit_postprocessing, read_config
    from kdstream.text.match import tokenizers_match
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    teacher_dir = Path(path)
    check_model_dir(teacher_dir, "teacher", need_weights=True)
    theirs, mine = tokenizer_fingerprint(load_tokenizer(teacher_dir)), tokenizer_fingerprint(tokenizer)
    if not tokenizers_match(theirs, mine):
        raise KdError(
            f"the teacher's tokenizer ({teacher_dir}: vocab {theirs['vocab_size']}, sha256 {theirs['sha256'][:12]}) "
            f"differs from the student's (vocab {mine['vocab_size']}, sha256 {mine['sha256'][:12]}): online KD "
            "needs one tokenizer; use a student with the teacher's tokenizer")
    post = logit_postprocessing(read_config(teacher_dir / "config.json"))
    if post:
        raise KdError(f"teacher {teacher_dir} post-processes its logits ({post}), which online KD does not apply: "
                      "precompute a store from it instead (precompute-logits --backend hf)")
    teacher = load_causal_lm(teacher_dir, "float32", str(device.type))
    v_t, v_s = teacher.get_output_embeddings().weight.shape[0], net.get_output_embeddings().weight.shape[0]
    if v_t != v_s:
        raise KdError(f"the teacher has {v_t} output classes and the student {v_s}: online dense KD compares them "
                      "class by class; use a student with the teacher's output size")
    teacher.to(device).requires_grad_(False)
    return teacher


def check_loss_fits_store(loss: str, store) -> None:
    """--loss ce_sampled is the cross-entropy against a sampled store's draws; on top-k lists it
    would be forward KL at T = 1 under another name, so a mix-up is refused."""
    from kdstream.distill.losses import CE_SAMPLED

    if loss == CE_SAMPLED and not store.sampled:
        raise KdError(f"--loss {CE_SAMPLED} needs a sampled store (precompute-logits --targets sampled); "
                      f"{store.url} holds top-k lists: use --loss forward_kl (--temperature 1 for the same gradient)")


def check_hard_tokenizer(loss: str, store, tokenizer) -> None:
    """--loss hard trains on the teacher's top-1 token ids, which name other strings (or nothing)
    in another tokenizer: no byte alignment makes one token of one vocabulary a token of another."""
    from kdstream.distill.losses import HARD
    from kdstream.text.match import tokenizers_match

    if loss == HARD and not tokenizers_match(tokenizer, store):
        raise KdError(f"--loss {HARD} trains on the teacher's top-1 token ids, and the student's tokenizer differs "
                      f"from the store's ({store.url}): use a student with the teacher's tokenizer, or --loss "
                      "forward_kl / ce, which train across tokenizers")


def verify_before_training(urls: str) -> None:
    """Decode every chunk once (crc32c + zstd) so a corrupt store stops the run before step 0,
    naming the chunk, instead of hours in. Costs one read pass: small next to an epoch of training.
    ``urls``: --logits-store, one store or several comma-separated (each verified)."""
    from kdstream.storage.union import split_urls
    from kdstream.storage.verify import verify_store

    for url in split_urls(urls):
        report = verify_store(url)
        if not report.ok:
            first = (report.corrupt or report.problems)[0]
            more = len(report.corrupt) + len(report.problems) - 1
            raise KdError(f"store {url} is damaged: {first}{f' (and {more} more)' if more else ''}: "
                          f"run `kdstream store verify {url}` and re-copy or regenerate it")


def cross_mode(opts, store, tokenizer) -> str | None:
    """The cross-tokenizer loss this run uses (cross_tokenizer.CROSS_MODES), or None for the
    token-level losses: ``--cross-tokenizer auto`` picks alm+exact when the student's tokenizer
    differs from the store's (KD losses; CE_ONLY for --loss ce: CE on the student's own tokens
    of the store's texts); an explicit mode applies even to the same one."""
    from kdstream.distill.cross_tokenizer import AUTO, CE_ONLY, CROSS_DEFAULTS
    from kdstream.text.match import tokenizers_match

    if opts.cross_tokenizer == AUTO:
        if tokenizers_match(tokenizer, store) or opts.loss not in (*KD_LOSSES, "ce"):
            return None
        return CE_ONLY if opts.loss == "ce" else CROSS_DEFAULTS["mode"]
    return opts.cross_tokenizer


def cross_targets(opts, store, tokenizer):
    """The loader's per-batch transform of a cross-tokenizer run (None otherwise); the teacher's
    tokenizer is the student's when they are the same, else ``--teacher-tokenizer``'s or the one the
    store carries (checked: storage.tokenizer_files.teacher_tokenizer)."""
    from kdstream.distill.cross_tokenizer import CrossTargets
    from kdstream.storage.tokenizer_files import teacher_tokenizer
    from kdstream.text.match import tokenizers_match

    mode = cross_mode(opts, store, tokenizer)
    if opts.student_chat_template and (mode is None or not store.conversations):
        raise KdError("--student-chat-template is for a student of another tokenizer on a conversation store: "
                      "drop it (a same-tokenizer student reads the store's own tokens)")
    if mode is None:
        return None
    if tokenizers_match(tokenizer, store):
        teacher = tokenizer
    else:
        teacher = teacher_tokenizer(store, opts.teacher_tokenizer, missing=(
            f"the student's tokenizer differs from the store's and {store.url} carries no tokenizer (written before "
            "stores carried one): pass --teacher-tokenizer DIR (the teacher's tokenizer) to distil across tokenizers"))
    cross = CrossTargets.build(teacher, tokenizer, mode, opts.exact_map, opts.exact_rows)
    if store.conversations:  # the student renders each conversation with its own template
        from kdstream.distill.cross_conversations import conversation_targets

        return conversation_targets(cross, store, opts.student_chat_template)
    return cross


def load_source(opts, tokenizer, net):
    """(source, open_source, seq_len): a logit store (or several read as one: open_stores), packed
    corpus examples, or a chat dataset's conversations (one per example, CE at the assistant targets)."""
    from kdstream.distill.loader import Given, OpenStore

    if opts.logits_store is not None:
        from kdstream.storage import open_stores

        store = open_stores(opts.logits_store)
        check_hard_tokenizer(opts.loss, store, tokenizer)
        if cross_mode(opts, store, tokenizer) is None:
            check_store_matches(store, tokenizer, net)
        check_loss_fits_store(opts.loss, store)
        return store, OpenStore.of(store), store.seq_len
    from kdstream.data.dataset_examples import dataset_examples

    # online KD scores every position of a window; a chat dataset trains on its targets only
    online = ("--teacher runs on text windows: for a chat dataset, precompute a store of it (precompute-logits "
              "--dataset) and distil from that")
    examples, _, _ = dataset_examples(opts.dataset, opts.text_field, opts.split, opts.seq_len, opts.max_examples,
                                      opts.chat, tokenizer, refuse_chat=online if opts.teacher else None)
    return examples, Given(examples), opts.seq_len


def split_rows(source, exclude: frozenset[int], eval_examples: int,
               on_absent: Callable[[list[int]], None] | None = None,
               max_rows: int | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(train mask over rows or None when all rows train, held-out row indices). ``on_absent``
    is called with the sorted excluded ids that no row holds (when there are any). ``max_rows``
    (--max-examples): only the first rows take part, in training and in the held-out set.

    The held-out set is the last ``eval_examples`` rows that are not excluded: a fixed,
    documented choice that does not depend on the seed, so runs with different seeds are
    evaluated on the same examples.
    """
    n = len(source)
    if max_rows is not None and max_rows < 1:
        raise KdError(f"--max-examples {max_rows} must be at least 1")
    limited = max_rows is not None and max_rows < n
    if not exclude and not eval_examples and not limited:
        return None, np.zeros(0, np.int64)
    kept = np.ones(n, bool)
    if limited:
        kept[max_rows:] = False
    if exclude:  # only then are the ids needed
        ids = source.read(0, n, ("example_id",))["example_id"]  # (S,) int64
        kept &= ~np.isin(ids, list(exclude))
        absent = sorted(exclude - set(ids.tolist()))
        if absent and on_absent is not None:
            on_absent(absent)
    if not kept.any():
        raise KdError("every example is excluded: check --exclude")
    if eval_examples >= int(kept.sum()):
        raise KdError(f"--eval-examples {eval_examples} leaves nothing to train on ({int(kept.sum())} examples): lower it")
    held = np.flatnonzero(kept)[-eval_examples:] if eval_examples else np.zeros(0, np.int64)
    kept[held] = False
    return kept, held
