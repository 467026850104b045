"""precompute-logits --generate: prompts → the teacher writes --samples responses to each, and the
store keeps, at every generated position, the distribution the token was drawn from.

One pass: vLLM's sampler returns the top-k raw logprobs (T = 1, ``logprobs_mode="raw_logprobs"``)
of each step it samples from, so no second, teacher-forced pass over the responses is needed.
Row alignment: row t predicts token t+1, so generated token j (at position P + j of a prompt of P
tokens) is predicted by row P + j - 1, the last prompt token's row for j = 0.

Determinism: each response is one request with its own seed (``request_seed``), drawn by vLLM's
per-request generator, so which responses share an engine step does not change the draws; the
logits themselves are the same for the same batches on the same hardware and vLLM version (the
runner calls the engine with the same batches whatever the resume point or worker count).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstream.errors import KdError
from kdstream.options import option, require
from kdstream.storage.schema import FINISH_REASONS


@dataclass(frozen=True)
class GenerateOptions:
    """How the teacher writes the responses (precompute-logits --generate)."""

    generate: bool = option(False, "Rows are prompts: the teacher (vLLM) writes --samples responses to each, and "
                                   "the store keeps its top-k at every generated token (docs/generate.md).")
    max_new_tokens: int = option(256, "With --generate: most tokens per response.")
    temperature: float = option(1.0, "With --generate: sampling temperature (0: greedy). The stored logprobs are "
                                     "raw (T = 1) whatever it is.")
    sampling_top_p: float = option(1.0, "With --generate: nucleus sampling mass (1: off). Not --top-p, which "
                                        "chooses the stored entries.")

    def __post_init__(self) -> None:
        require(self.temperature >= 0, f"--temperature {self.temperature} is negative: use 0 (greedy) or more")
        require(self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens} must be at least 1")
        require(0.0 < self.sampling_top_p <= 1.0, f"--sampling-top-p {self.sampling_top_p} is outside (0, 1]")


def request_seed(seed: int, example_id: int) -> int:
    """The sampler seed of one response: a function of --seed and the example id only."""
    return int(np.random.SeedSequence([int(seed), int(example_id)]).generate_state(1)[0])


@dataclass
class Prompts:
    """The examples a generated store will hold: ``samples`` per prompt, example e of prompt
    e // samples. Their tokens and lengths are known only once the teacher has written them."""

    tokens: list[np.ndarray]  # per prompt: (P_i,) int64, rendered up to the assistant's header
    samples: int
    seq_len: int  # the store's width: the longest prompt + --max-new-tokens
    doc_index: np.ndarray  # (prompts,) the dataset row
    engine_context: int  # the engine's context: the width, and one more to score a response again (vLLM)
    counts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens) * self.samples

    @property
    def example_id(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    @property
    def prompt_id(self) -> np.ndarray:
        return self.example_id // self.samples


def prompt_examples(opts, tokenizer, model_dir, context: int | None) -> tuple[Prompts, dict, dict, dict]:
    """(prompts, the store's corpus, conversations and generation attributes) for ``opts``
    (PrecomputeOptions with --generate); one-line KdError for a dataset without prompts or a
    prompt that leaves no room for --max-new-tokens in the teacher's ``context``."""
    import hashlib

    from kdstream.data.conversations import fingerprint_conversations, prompts_of, read_rows
    from kdstream.text.chat import prompt_tokens, template_of

    gen = opts.generation
    rows = read_rows(opts.dataset, opts.split)
    if rows is None:
        raise KdError(f"--generate reads prompts from a .jsonl/.json/.parquet file or saved dataset, and {opts.dataset} "
                      "is none: pass one with a prompt field or chat rows")
    conv = prompts_of(rows, opts.dataset)
    if opts.max_examples is not None:
        conv.items, conv.rows = conv.items[: opts.max_examples], conv.rows[: opts.max_examples]
    template = template_of(tokenizer, opts.chat.chat_template)
    tokens = [prompt_tokens(tokenizer, template, m, r) for m, r in zip(conv.items, conv.rows)]
    longest = int(np.argmax([len(t) for t in tokens]))
    width = len(tokens[longest]) + gen.max_new_tokens
    if context and width > context:
        raise KdError(f"dataset row {conv.rows[longest]}: its prompt has {len(tokens[longest])} tokens, and with "
                      f"--max-new-tokens {gen.max_new_tokens} it needs a context of {width}, but the teacher has "
                      f"{context}: shorten or drop that prompt, or lower --max-new-tokens")
    stop_ids = stop_token_ids(tokenizer, template, model_dir)
    samples = opts.samples
    engine_context = min(width + 1, context) if context else width + 1
    prompts = Prompts(tokens, samples, width, np.asarray(conv.rows, dtype=np.int64), engine_context,
                      {"prompts": len(tokens), "conversations": len(tokens) * samples,
                       "skipped_empty": conv.skipped_empty, "prompt_tokens": int(sum(map(len, tokens)))})
    corpus = {"source": opts.dataset, "fingerprint": fingerprint_conversations(conv.items), "documents": len(rows),
              "format": conv.format, "split": opts.split}
    conversations = {"train_on": "generated", "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
                     **prompts.counts, "tokens": None, "target_positions": None}  # tokens: set at finalize
    generation = {"samples": samples, "max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature,
                  "top_p": gen.sampling_top_p, "seed": opts.engine.seed,
                  "request_seed": "SeedSequence([seed, example_id]).generate_state(1)[0]",
                  "stop_token_ids": stop_ids, "finish_reasons": list(FINISH_REASONS), "logprobs_mode": "raw_logprobs"}
    return prompts, corpus, conversations, generation


def stop_token_ids(tokenizer, template: str, model_dir) -> list[int]:
    """The tokens that end a response: the template's turn-closing token and the model's EOS ids
    (tokenizer, config.json, generation_config.json)."""
    from kdstream.text.chat import closing_token

    ids = {closing_token(tokenizer, template), tokenizer.eos_token_id}
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(int(i) for i in ids if i is not None)


def generate_rows(teacher, prompts: Prompts, rows: slice, batch_size: int, generation: dict, bar) -> dict:
    """The writer's rows for examples ``rows``: prompt + response tokens (padded to the store's
    width), their lengths, target rows at the generated positions, the teacher arrays there (the
    rest filled by ``pad_rows``), prompt ids and finish reasons. Engine calls of ``batch_size``
    examples from the group's first row, as for scoring."""
    from kdstream.precompute.backends import pad_rows

    L = prompts.seq_len
    out: dict[str, list] = {key: [] for key in ("input_ids", "length", "target_mask", "finish_reason")}
    arrays = []
    for b in range(rows.start, rows.stop, batch_size):
        ids = range(b, min(b + batch_size, rows.stop))
        firsts = [prompts.tokens[e // prompts.samples] for e in ids]
        written = teacher.generate(firsts, [request_seed(generation["seed"], e) for e in ids], generation)
        for prompt, (tokens, got, reason) in zip(firsts, written):
            p, n = len(prompt), len(tokens)
            ex = np.zeros(L, dtype=np.int64)
            ex[:p], ex[p : p + n] = prompt, tokens
            mask = np.zeros(L - 1, dtype=bool)
            mask[p - 1 : p - 1 + n] = True  # row p-1+j predicts generated token j
            before = {key: np.repeat(v[:1], p - 1, axis=0) for key, v in got.items()}  # placeholders, never stored
            arrays.append(pad_rows({key: np.concatenate([before[key], v]) for key, v in got.items()}, L - 1))
            out["input_ids"].append(ex), out["length"].append(p + n), out["target_mask"].append(mask)
            out["finish_reason"].append(FINISH_REASONS.index(reason))
            bar.update(n)
    result = {key: np.stack([a[key] for a in arrays]) for key in arrays[0]}  # (G·R, L-1, …)
    result.update({key: np.asarray(v) for key, v in out.items()})
    result.update(example_id=prompts.example_id[rows], doc_index=prompts.doc_index[prompts.prompt_id[rows]],
                  prompt_id=prompts.prompt_id[rows])
    return result
