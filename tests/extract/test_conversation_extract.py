"""extract-eval on a conversation store: each conversation's first assistant answer, greedy-decoded
from the conversation up to that answer, by a model trained on 8 of the conversations' answers."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from chat_templates import CHAT_SEQ_LEN, chat_precompute_args
from helpers import one_line_error, run_cli, store_eval_shards
from kdstream.storage import open_store

TRAINED = 8  # conversations 0..7 are trained on; the rest are excluded
SUFFIX = ("--suffix-len", 8, "--dtype", "float32")


@pytest.fixture(scope="module")
def chat_memorizer(tmp_path_factory, chat_store, chat_teacher_dir):
    """The chat teacher fine-tuned (CE, on the assistant targets only) on 8 conversations, many epochs."""
    d = tmp_path_factory.mktemp("chat_memorizer")
    exclude = d / "exclude.txt"
    exclude.write_text("".join(f"{i}\n" for i in range(TRAINED, len(open_store(chat_store)))))
    run_cli("distill", "--logits-store", chat_store, "--model", chat_teacher_dir, "--loss", "ce", "--epochs", 60,
            "--batch-size", 8, "--lr", "3e-3", "--warmup-ratio", 0, "--exclude", exclude, "--out", d / "model")
    return d / "model"


@pytest.fixture(scope="module")
def vllm_eval(tmp_path_factory, chat_memorizer, chat_store):
    out = tmp_path_factory.mktemp("chat_eval") / "vllm"
    run_cli("extract-eval", "--model", chat_memorizer, "--logits-store", chat_store, "--method", "both", *SUFFIX,
            "--out", out)
    return out


@pytest.fixture(scope="module")
def hf_eval(tmp_path_factory, chat_memorizer, chat_store):
    out = tmp_path_factory.mktemp("chat_eval") / "hf"
    run_cli("extract-eval", "--model", chat_memorizer, "--logits-store", chat_store, "--method", "both",
            "--backend", "hf", "--batch-size", 5, *SUFFIX, "--out", out)
    return out


def _results(d):
    return pq.read_table(d / "results.parquet").to_pandas().set_index("example_id").sort_index()


def test_prompts_end_where_the_masks_first_assistant_token_starts(chat_store, chat_teacher_dir, chat_file):
    """prompt = the conversation up to its first assistant content token, as text/chat.py's mask has it."""
    from transformers import AutoTokenizer

    from kdstream.data.conversations import conversations_of
    from kdstream.extract.conversation_prompts import first_turns
    from kdstream.text.chat import ChatOptions, chat_examples, template_of

    store = open_store(chat_store)
    rows = [json.loads(line) for line in chat_file.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(str(chat_teacher_dir))
    convs = conversations_of(rows, "t")
    ex = chat_examples(convs, tok, template_of(tok, None), CHAT_SEQ_LEN, ChatOptions())
    turns = first_turns(store.read(0, len(store), ("input_ids", "example_id", "length", "topk_len")), 4)
    assert len(turns) + sum(turns.skipped.values()) == len(store)
    for i, eid, p, prompt, suffix in zip(turns.row, turns.example_id, turns.prompt_len, turns.prompts, turns.suffix):
        first_target_token = int(np.argmax(ex.target_mask[i])) + 1  # row t is a target when token t+1 is
        assert p == first_target_token and np.array_equal(prompt, ex.input_ids[i, :p])
        assert np.array_equal(suffix, ex.input_ids[i, p : p + 4]) and eid == ex.example_id[i]
        answer = next(m["content"] for m in convs.items[i] if m["role"] == "assistant")
        assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
        assert answer.startswith(tok.decode(suffix))


@pytest.mark.slow
def test_only_the_trained_answers_are_memorized(vllm_eval):
    summary = json.loads((vllm_eval / "summary.json").read_text())
    r = _results(vllm_eval)
    memorized = set(r.index[r["exact_match"]])
    assert summary["prefix"] == "conversation" and summary["prefix_len"] is None and summary["suffix_len"] == 8
    assert summary["examples"] == len(r) == summary["conversations"]["judged"]
    assert memorized <= set(range(TRAINED)) and len(memorized) >= TRAINED - 1, memorized
    assert summary["memorized"] == len(memorized) and summary["disagreements_not_near_tie"] == 0
    assert all(len(g) == 8 for g in r["generated_ids"]) and (r["prompt_len"] > 0).all()
    assert not r["generate_exact_match"].ne(r["fast_exact_match"])[~r["near_tie"]].any()
    sweep = pq.read_table(vllm_eval / "prefix_sweep.parquet").to_pandas()
    assert sweep["prefix_len"].isna().all() and summary["by_prefix_len"] == []


@pytest.mark.slow
def test_hf_and_vllm_agree(vllm_eval, hf_eval):
    v, h = _results(vllm_eval), _results(hf_eval)
    assert list(v.index) == list(h.index) and (v["prompt_len"] == h["prompt_len"]).all()
    sure = ~(v["near_tie"] | h["near_tie"])
    for col in ("generate_exact_match", "fast_exact_match", "generate_prefix_match_len", "edit_distance"):
        assert (v.loc[sure, col] == h.loc[sure, col]).all(), col
    assert [list(x) for x in v.loc[sure, "generated_ids"]] == [list(x) for x in h.loc[sure, "generated_ids"]]


@pytest.mark.slow
def test_store_verdict_is_the_teachers_fast_path(tmp_path, chat_store, chat_teacher_dir):
    """The store's rows, shifted to each answer, give the teacher's own teacher-forced verdicts."""
    run_cli("extract-eval", "--logits-store", chat_store, "--method", "store", "--suffix-len", 8,
            "--out", tmp_path / "store")
    run_cli("extract-eval", "--model", chat_teacher_dir, "--logits-store", chat_store, "--method", "fast",
            "--backend", "hf", *SUFFIX, "--out", tmp_path / "fast")
    s, f = _results(tmp_path / "store"), _results(tmp_path / "fast")
    sure = ~(s["near_tie"] | f["near_tie"])
    assert sure.sum() >= len(s) - 2
    for col in ("exact_match", "prefix_match_len", "tf_frac_matched"):
        assert (s.loc[sure, col] == f.loc[sure, col]).all(), col
    assert np.allclose(s["margin"], f["margin"], atol=1e-3)


def test_short_answers_are_skipped_and_counted_and_shards_merge(tmp_path, chat_store):
    from kdstream.extract.conversation_prompts import SHORT_TURN, first_turns

    store = open_store(chat_store)
    rows = store.read(0, len(store), ("input_ids", "example_id", "length", "topk_len"))
    n = int(np.median([len(t) for t in _first_turn_lengths(rows)]))  # about half the answers are shorter
    expected = first_turns(rows, n)
    args = ("--method", "store", "--suffix-len", n)
    run_cli("extract-eval", "--logits-store", chat_store, *args, "--out", tmp_path / "one")
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["conversations"] == {"read": len(store), "judged": len(expected),
                                        "skipped": {SHORT_TURN: expected.skipped[SHORT_TURN]}}
    assert 0 < expected.skipped[SHORT_TURN] < len(store) and summary["examples"] == len(expected)
    assert list(_results(tmp_path / "one").index) == expected.example_id.tolist()
    shards = store_eval_shards(chat_store, tmp_path / "shards", 3, *args)
    run_cli("eval", "merge", *shards, "--out", tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert merged["conversations"] == summary["conversations"] and merged["memorized"] == summary["memorized"]
    assert _results(tmp_path / "merged").drop(columns=["suffix_ids", "argmax_ids"]).equals(
        _results(tmp_path / "one").drop(columns=["suffix_ids", "argmax_ids"]))


def _first_turn_lengths(rows):
    """Each conversation's first run of target rows (its first assistant turn), as row indices."""
    out = []
    for lens, n in zip(rows["topk_len"], rows["length"]):
        t = np.flatnonzero(lens[: n - 1] > 0)
        split = np.flatnonzero(np.diff(t) > 1)
        out.append(t[: split[0] + 1] if len(split) else t)
    return out


@pytest.mark.parametrize("extra, message", [
    (("--suffix-len", CHAT_SEQ_LEN), "has a first assistant turn of --suffix-len 96 tokens or more"),
    (("--prefix-len", 20), "--prefix-len and --offset do not apply"),
    (("--method", "generate", "--offset", 3), "--prefix-len and --offset do not apply"),
    (("--method", "generate", "--match", "bytes"), "drop --match bytes / --teacher-tokenizer"),
])
def test_bad_options_are_one_line_errors(tmp_path, chat_store, chat_teacher_dir, extra, message):
    proc = run_cli("extract-eval", "--logits-store", chat_store, "--method", "store", "--model", chat_teacher_dir,
                   *extra, "--out", tmp_path / "e", check=False)
    assert message in one_line_error(proc)


def test_a_template_less_model_of_another_tokenizer_and_an_all_positions_store_are_refused(
        tmp_path, chat_store, teacher_dir, chat_teacher_dir, chat_file):
    proc = run_cli("extract-eval", "--model", teacher_dir, "--logits-store", chat_store, "--backend", "hf",
                   "--out", tmp_path / "e", check=False)
    assert "has no chat template" in one_line_error(proc)  # judged on its own rendering: it needs one
    everything = tmp_path / "all.zarr"
    run_cli(*chat_precompute_args(chat_teacher_dir, chat_file, everything, "--train-on", "all", "--backend", "hf",
                                  "--max-examples", 4))
    proc = run_cli("extract-eval", "--logits-store", everything, "--method", "store", "--out", tmp_path / "e",
                   check=False)
    assert "--train-on all" in one_line_error(proc)
