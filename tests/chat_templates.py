"""Chat templates of two real families, written out for tests (no hub): ChatML as SmolLM2-Instruct
ships it (a default system prompt when the conversation has none), and Llama-3-style headers."""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>"]

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Mistral-Instruct's [INST] turns (no system role), for a SentencePiece-style student: its answers
# start a piece, so its first answer token carries the "▁" the teacher's lacks
INST = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
        "' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def train_chat_tokenizer(texts: list[str], vocab: int, out_dir: Path, template: str, specials: list[str]):
    """A byte-level BPE tokenizer (``<|endoftext|>`` = id 0) with the template's special tokens in
    its vocabulary of ``vocab`` ids, saved with the template as its chat_template."""
    from kdstream.text.tokenizers import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab, out_dir, tuple(specials), template)


CHAT_SEQ_LEN = 96  # the tiny models' context is 128; vLLM scores L tokens as a request of L + 1


def conversations(docs: list[str], n: int = 40) -> list[dict]:
    """``n`` conversations built from the corpus' sentences: one to three user/assistant turns, a
    system prompt in every third, a row without an assistant turn at 7 (skipped and counted)."""
    sentences = [s.strip() for d in docs for s in d.split(".") if 20 < len(s.strip()) < 90]
    rows = []
    for i in range(n):
        turns = 1 + i % 3
        messages = [{"role": "system", "content": "Answer in one sentence."}] if i % 3 == 0 else []
        for t in range(turns):
            a, b = sentences[(2 * (i * 3 + t)) % len(sentences)], sentences[(2 * (i * 3 + t) + 1) % len(sentences)]
            messages += [{"role": "user", "content": a + "?"}, {"role": "assistant", "content": b + "."}]
        rows.append({"messages": messages if i != 7 else messages[:1]})
    return rows


def chat_precompute_args(teacher: Path, dataset: Path, out: Path, *extra) -> list:
    return ["precompute-logits", "--model", teacher, "--dataset", dataset, "--out", out, "--top-k", 8,
            "--seq-len", CHAT_SEQ_LEN, "--dtype", "float32", "--batch-size", 8, "--chunk-rows", 8, *extra]


GEN_PROMPTS, GEN_SAMPLES = 6, 3  # the session's generated store: 18 examples, chunks of 4, batches of 8


def short_prompts(docs: list[str]) -> list[dict]:
    """Chat rows whose prompts leave room for responses in the tiny teacher's context: one user
    turn (a system prompt in some), an assistant turn to drop in all but the last."""
    rows = [r for r in conversations(docs, 30) if len(r["messages"]) <= 3][: GEN_PROMPTS + 2]
    rows[-1]["messages"] = rows[-1]["messages"][:-1]  # already ends with the user's turn
    return rows


def generate_args(teacher: Path, dataset: Path, out: Path, *extra) -> list:
    return ["precompute-logits", "--generate", "--model", teacher, "--dataset", dataset, "--out", out,
            "--top-k", 8, "--samples", GEN_SAMPLES, "--max-new-tokens", 12, "--max-examples", GEN_PROMPTS,
            "--dtype", "float32", "--batch-size", 8, "--chunk-rows", 4, "--seed", 5,
            "--logprob-encoding", "fp32", *extra]


def without_template(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir``'s files at ``out`` whose tokenizer has no chat template (neither
    chat_template.jinja nor a ``chat_template`` in tokenizer_config.json)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "chat_template.jinja":
            (out / f.name).write_bytes(f.read_bytes())
    config = out / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.pop("chat_template", None) is not None:
            config.write_text(json.dumps(data))
    return out
