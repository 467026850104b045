"""A student of another tokenizer on a conversation store: each conversation rendered with the
student's own chat template, aligned with the teacher's tokens on the assistant's content only.

Per store row (one conversation; ``doc_index`` is its dataset row, reread and checked against the
store's fingerprint when the run starts; a ``--generate`` store's row is its prompt, answered by the
teacher's response decoded from the store):
- the teacher's target runs (consecutive target tokens) are its assistant turns, in order: each
  turn's content, then the special token(s) closing it; the last run may be cut by truncation;
- the student renders the same messages with its template (text/chat.py); its sequence is the
  rendering cut into pieces at each answer's content: template pieces tokenized as they are,
  each content piece as the aligner tokenizes the teacher's content (align.py: the same bytes);
- the chunks are the aligner's, inside each content. A content's first chunk is usable here
  (both models predict it from the header before it): its teacher log-likelihood takes the
  row before the content, which the store holds (the first content token is a target). Its
  exact row maps the teacher's top-k through ``CrossTargets.lead_map`` when the student's first
  content token carries a lead byte (a content starts a piece: SentencePiece's "▁");
- the student's targets (CE, and where its loss is) are its content tokens and the token(s) that
  close each turn in its own template; the template's other tokens never are, nor is any
  teacher template token an input.
A conversation whose rendering does not spell the teacher's content (a template that trims or
rewrites it), or whose content the aligner cannot map, is skipped and counted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from kdstream.distill.aligned_batch import AlignedExample, lead_rows, map_top_k, merge_repeated_ids
from kdstream.distill.cross_tokenizer import ALIGNED, PAD_ID, SKIPPED, CrossTargets
from kdstream.errors import KdError
from kdstream.text.align import Skip

CONTENT_DIFFERS = "content_differs"  # the student's rendering does not spell the teacher's content


@dataclass
class ConversationTargets:
    """rows of a conversation store (input_ids, topk_len, doc_index and the mode's arrays) →
    the same dict as ``CrossTargets``: {ALIGNED: [AlignedExample], SKIPPED: {reason: n}, PAD_ID}."""

    cross: CrossTargets
    template: str  # the student's chat template
    messages: dict[int, list[dict]]  # dataset row -> its messages (a --generate store: its prompt's)
    generated: bool = False  # a --generate store: each answer is the teacher's response, decoded

    @property
    def mode(self) -> str:
        return self.cross.mode

    @property
    def skip_reasons(self) -> tuple[str, ...]:
        return (*self.cross.skip_reasons, CONTENT_DIFFERS)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict:
        skipped: Counter = Counter()
        plans = []
        for b in range(len(rows["input_ids"])):
            plan = plan_conversation(self.cross.aligner, self.template, self.messages, self.generated, rows, b)
            if isinstance(plan, str):
                skipped[plan] += 1
            else:
                plans.append((b, plan))
        # every kept turn's content of the batch aligned in one call
        contents = [rows["input_ids"][b][a:e] for b, plan in plans for a, e, _, _ in plan.turns]
        results = self.cross.aligner.align_rows(contents).alignments() if contents else []
        out, at = [], 0
        for b, plan in plans:
            found = results[at:at + len(plan.turns)]
            at += len(plan.turns)
            bad = next((r for r in found if isinstance(r, Skip)), None)
            if bad is not None:
                skipped[bad.reason] += 1
                continue
            out.append(self._example(rows, b, plan, found))
        return {ALIGNED: out, SKIPPED: dict(skipped), PAD_ID: self.cross.pad_id}

    def _example(self, rows: dict[str, np.ndarray], b: int, plan: ConversationPlan, found: list) -> AlignedExample:
        """The student's sequence of conversation b: per turn, the template before the answer (one
        unusable chunk, not learned), the content (the aligner's chunks, learned) and the template
        piece that closes the turn (learned: where to stop)."""
        tok = self.cross.aligner.student
        s_vocab = self.cross.aligner.s
        ids, chunks, targets, nbytes = [], [], [], []
        lp, usable, exact_rows, exact_t, exact_lead = [], [], [], [], []
        n_chunks = n_tokens = pos = 0
        lp_row = rows.get("target_logprob")
        for (a, _, s0, s1), al in zip(plan.turns, found):
            for piece, is_target in ((plan.text[pos:s0], False), (None, True), (plan.text[s0 + len(al.text):s1], True)):
                if piece is None:  # the content, as the aligner tokenized it, with its chunks
                    use, chunk_lp, s_rows, t_rows, lead = self._content(al, a, n_tokens > 0, lp_row, b)
                    ids.append(al.student_ids)
                    chunks.append(al.student_chunk + n_chunks)
                    nbytes.append(al.student_spans[:, 1] - al.student_spans[:, 0])
                    targets.append(np.ones(len(al.student_ids), bool))
                    lp.append(chunk_lp)
                    usable.append(use)
                    exact_rows.append(n_tokens + s_rows)
                    exact_t.append(t_rows)
                    exact_lead.append(lead)
                    n_chunks += len(use)
                    n_tokens += len(al.student_ids)
                    continue
                if not piece:
                    continue
                p_ids = np.asarray(tok(piece, add_special_tokens=False)["input_ids"], np.int64)
                ids.append(p_ids)
                chunks.append(np.full(len(p_ids), n_chunks, np.int64))  # one unusable chunk per piece
                nbytes.append(s_vocab.lengths[p_ids])
                targets.append(np.full(len(p_ids), is_target))
                lp.append(np.zeros(1))
                usable.append(np.zeros(1, bool))
                n_chunks += 1
                n_tokens += len(p_ids)
            pos = s1
        rows_s, rows_t = np.concatenate(exact_rows), np.concatenate(exact_t)
        e_ids, e_lp, kept = self._exact(rows, b, rows_t, np.concatenate(exact_lead))
        return AlignedExample(np.concatenate(ids), np.concatenate(chunks), np.concatenate(lp),
                              np.concatenate(usable), rows_s[kept].astype(np.int64), e_ids, e_lp,
                              np.concatenate(nbytes), np.concatenate(targets))

    def _content(self, al, a: int, after_header: bool, lp_row, b: int) -> tuple[np.ndarray, ...]:
        """One answer's content (its Alignment ``al``, teacher tokens from store position ``a``) →
        usable (C,), the teacher's chunk log-likelihoods (C,), and the exact rows: the student's
        (in the content's positions) and the store's, each predicting a usable chunk's first token,
        and which of them predict a student token with a lead byte (the content's first one can)."""
        use = al.usable.copy()
        tb, sb = al.teacher_bounds, al.student_bounds
        if len(use) and tb[0, 0] == 0 and sb[0, 0] == 0 and (al.teacher_chunk[:max(tb[0, 1], 1)] == 0).all():
            use[0] = after_header  # predicted from the header before it, on both sides
        if lp_row is None:  # CE only: no teacher targets
            chunk_lp = np.zeros(len(use))
        else:  # the store's rows a-1+j over the chunk's teacher tokens j (row a-1 predicts the first)
            j = np.flatnonzero(al.teacher_chunk >= 0)
            chunk_lp = np.bincount(al.teacher_chunk[j], weights=lp_row[b][a - 1 + j].astype(np.float64),
                                   minlength=len(use))
        k = np.flatnonzero(use)
        if self.cross.exact_rows == "same_token":  # one token on each side
            k = k[(tb[k, 1] - tb[k, 0] == 1) & (sb[k, 1] - sb[k, 0] == 1)]
        first = sb[k, 0]  # the student token each exact row predicts
        led = lead_rows(al.student_ids[first], al.student_spans[first], self.cross.aligner.s.lengths)
        return use, chunk_lp, first - 1, a + tb[k, 0] - 1, led

    def _exact(self, rows: dict[str, np.ndarray], b: int, t_rows: np.ndarray,
               lead: np.ndarray) -> tuple[np.ndarray, ...]:
        """The teacher's top-k at store rows ``t_rows`` of conversation b as student ids (P, k), their
        log-probs (-inf unmapped), and which of ``t_rows`` they are (rows with no mapped id are left
        out); ``lead`` (P,): rows mapped by the cross targets' ``lead_map``."""
        vmap = self.cross.vocab_map
        if vmap is None:  # ALM only
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), np.zeros(len(t_rows), bool)
        ids = map_top_k(rows["topk_ids"][b][t_rows], vmap, self.cross.lead_map, lead)
        logprobs = np.array(rows["topk_logprobs"][b][t_rows], np.float32)
        logprobs[ids < 0] = -np.inf
        if self.cross.merge or lead.any():  # the lead map may send two teacher ids to one student id
            ids, logprobs = merge_repeated_ids(ids, logprobs)
        kept = np.isfinite(logprobs).any(-1)
        return ids[kept].astype(np.int64), logprobs[kept], kept


@dataclass(frozen=True)
class ConversationPlan:
    """A conversation as the student renders it, and where the teacher's answers lie in it."""

    text: str  # the student's rendering
    turns: list  # (teacher content start, end, student content start (char), student turn end (char))


def plan_conversation(aligner, template: str, messages_of: dict[int, list[dict]], generated: bool,
                      rows: dict[str, np.ndarray], b: int) -> ConversationPlan | str:
    """Conversation b of ``rows`` (input_ids, topk_len, doc_index) on both sides: the student's
    rendering (``aligner.student`` with ``template``) and each teacher answer's place in it; or the
    reason to skip it. Shared with extract-eval, which judges a student on the same rendering."""
    from kdstream.text.chat import target_ranges

    ids = rows["input_ids"][b]
    target = np.zeros(len(ids), bool)
    target[1:] = rows["topk_len"][b] > 0  # token t+1 is a target when row t is
    t = aligner.t
    answers = []  # (start, content end, run end, content) of each teacher answer
    for a, e in _runs(target):
        c = e
        while c > a and t.special[ids[c - 1]]:
            c -= 1  # the closing special token(s) are not content
        try:
            content = t.bytes_of(ids[a:c], np.cumsum(t.lengths[ids[a:c]])).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            return CONTENT_DIFFERS  # cut inside a character (truncation, or a sampled byte token)
        answers.append((a, c, e, content))
    row = int(rows["doc_index"][b])
    messages = messages_of[row]
    if generated and answers:  # the prompt, answered by the teacher's own response
        messages = [*messages, {"role": "assistant", "content": answers[0][3]}]
    text, ranges = target_ranges(aligner.student, template, messages, row)
    turns = []  # (teacher content start, end, student content start, student turn end) per turn, chars
    for (a, c, e, content), (s0, s1) in zip(answers, ranges):
        if not content or not text.startswith(content, s0):
            return CONTENT_DIFFERS
        closed = c < e  # the teacher's turn ends here; else truncation (or --max-new-tokens) cut it
        turns.append((a, c, s0, s1 if closed else s0 + len(content)))
        if not closed:
            break
    if not turns:
        return CONTENT_DIFFERS
    return ConversationPlan(text, turns)


def _runs(target: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive True in ``target``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], target, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def conversation_targets(cross: CrossTargets, store, student_template_file: str | None) -> ConversationTargets:
    """The transform of a run whose student has another tokenizer, on conversation store ``store``:
    its dataset reread (checked against the store's fingerprint) and the student's template."""
    from kdstream.text.chat import template_of

    if (store.attrs.get("conversations") or {}).get("train_on") == "all":
        raise KdError(f"store {store.url} has rows at every position (--train-on all): its rows do not locate the "
                      "answers a student of another tokenizer aligns; precompute it with --train-on assistant")
    try:
        template = template_of(cross.aligner.student, student_template_file)
    except KdError:
        raise KdError("the student's tokenizer has no chat template, and a conversation store is rendered with the "
                      "student's own: pass --student-chat-template FILE") from None
    return ConversationTargets(cross, template, stored_messages(store), store.generated)


def stored_messages(store) -> dict[int, list[dict]]:
    """Dataset row -> messages of the conversations (a --generate store: the prompts) conversation
    store ``store`` was made from, reread and checked against the store's fingerprint: a model of
    another tokenizer renders each conversation itself, with its own template."""
    from kdstream.data.conversations import conversations_of, fingerprint_conversations, prompts_of, read_rows

    corpus = store.attrs.get("corpus") or {}
    source, split = corpus.get("source"), corpus.get("split", "train")
    rows = read_rows(source, split) if source else None
    if rows is None:
        raise KdError(f"store {store.url} was made from {source!r}, which is not here: a model of another tokenizer "
                      "renders each conversation itself, from the dataset the store was made from; put it back there")
    if store.generated:  # the prompts it was asked, as precompute-logits --generate read them
        conv = prompts_of(rows, source)
        n = int((store.attrs.get("conversations") or {}).get("prompts", len(conv.items)))
        conv.items, conv.rows = conv.items[:n], conv.rows[:n]
    else:
        conv = conversations_of(rows, source)
    if fingerprint_conversations(conv.items) != corpus.get("fingerprint"):
        raise KdError(f"dataset {source} has changed since store {store.url} was made from it (fingerprint differs): "
                      "restore it, or precompute the store again")
    return dict(zip(conv.rows, conv.items))
