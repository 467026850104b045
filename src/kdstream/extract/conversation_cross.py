"""extract-eval on a conversation store of a model whose tokenizer differs from the store's: a
student distilled across tokenizers (distill/cross_conversations.py), judged on bytes.

The model is judged on the rendering it was trained on: each conversation rendered with the
model's own chat template (its tokenizer's, which distill saves with a student, or
``--chat-template FILE``), cut where its first answer's content starts; the prompt is that text
tokenized as distill tokenizes the template's pieces (no special tokens added). The suffix is the
teacher's answer as ``first_turns`` cuts it (its first --suffix-len tokens) less the special
token(s) that close the turn: the model closes a turn with its own template's tokens, so only the
answer's content is compared, on its bytes (after the lead the model's tokens put before it, a
SentencePiece "▁", as distill trained it to). The model decodes greedily as many tokens as the
suffix has bytes (cross_tokenizer.py: the bound never cuts a match short), and has memorized the
answer iff its bytes start with the suffix's.

Skipped, with the reason in results.parquet's ``skip_reason``: a conversation whose rendering does
not spell the teacher's answers (``content_differs``: a template that trims or rewrites them) or
whose first answer the aligner cannot map (its reasons: the student never trained on either), and
one whose prompt plus the bound exceeds the model's context (``context``).
"""
from __future__ import annotations

import numpy as np

from kdstream.extract.cross_tokenizer import ByteJudge, Windows


def cross_judge(opts, tokenizer, store, url: str) -> tuple[ByteJudge, str]:
    """The byte judge (the store's tokenizer → the model's) and the model's chat template; KdError
    for what a cross-tokenizer evaluation cannot do."""
    from kdstream.errors import KdError
    from kdstream.storage.tokenizer_files import teacher_tokenizer
    from kdstream.text.chat import template_of

    if opts.match == "tokens":
        raise KdError("--match tokens needs the model to share the store's tokenizer, and its tokenizer differs: "
                      "use --match auto (bytes)")
    if opts.method != "generate":
        raise KdError(f"--method {opts.method} compares token ids, and the model's tokenizer differs from store "
                      f"{url}'s: use --method generate (judged on the answers' bytes)")
    if opts.features:
        raise KdError("--features scores the model on the store's tokens, and the model's tokenizer differs: drop "
                      "--features")
    teacher = teacher_tokenizer(store, opts.teacher_tokenizer, missing=(
        f"the model's tokenizer differs from store {url}'s, which carries no tokenizer: pass --teacher-tokenizer "
        "DIR (the teacher's tokenizer) to judge it on bytes"))
    try:
        template = template_of(tokenizer, opts.chat_template)
    except KdError:
        raise KdError(f"model {opts.model}'s tokenizer has no chat template, and a model of another tokenizer is "
                      "judged on its own rendering of each conversation: pass --chat-template FILE (the template "
                      "it was distilled with)") from None
    return ByteJudge(teacher, tokenizer), template


def cross_windows(judge: ByteJudge, template: str, messages_of: dict[int, list[dict]], generated: bool,
                  rows: dict[str, np.ndarray], turns, n: int, context: int | None) -> Windows:
    """The model's prompt and the suffix's bytes of each judged conversation of ``turns``
    (``first_turns`` of ``rows``: the store's input_ids, topk_len and doc_index over the range)."""
    from kdstream.distill.cross_conversations import plan_conversation
    from kdstream.text.align import Skip

    tok = judge.aligner.student
    plans = [plan_conversation(judge.aligner, template, messages_of, generated, rows, r) for r in turns.row.tolist()]
    kept = [(r, plan) for r, plan in zip(turns.row.tolist(), plans) if not isinstance(plan, str)]
    # each first answer's content as distill's aligner tokenized it for the student, in one call
    found = iter(judge.aligner.align_rows([rows["input_ids"][r][plan.turns[0][0]:plan.turns[0][1]]
                                           for r, plan in kept]).alignments() if kept else [])
    prompts, suffix, skip = [], [], []
    for r, plan in zip(turns.row.tolist(), plans):
        al = plan if isinstance(plan, str) else next(found)
        if isinstance(al, (str, Skip)):
            prompts.append(None)
            suffix.append(None)
            skip.append(al if isinstance(al, str) else al.reason)
            continue
        a, c, s0, _ = plan.turns[0]  # a = the prompt's length in the teacher's tokens
        # the student spells the answer with a lead of its own before the content (a SentencePiece
        # "▁" prepended: the aligner's one extra byte), so its generation starts with that lead too
        spelled, content = judge.model_text(al.student_ids), al.text.encode()
        lead = spelled[: len(spelled) - len(content)] if spelled.endswith(content) else b""
        want = lead + judge.teacher_text(rows["input_ids"][r][a : min(a + n, c)])  # no closing token
        prompt = np.asarray(tok(plan.text[:s0], add_special_tokens=False)["input_ids"], np.int64)
        fits = context is None or len(prompt) + len(want) <= context
        prompts.append(prompt if fits else None)
        suffix.append(want if fits else None)
        skip.append(None if fits else "context")
    return Windows(prompts, suffix, skip)
