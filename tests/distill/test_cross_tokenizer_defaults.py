"""The defaults of a cross-tokenizer distill run are the documented ones (docs/distill.md's table,
``distill --help``), and with them a student of another tokenizer beats plain CE on held-out text
(issue 41)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import SEQ_LEN, run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "distill.md"
# the documented defaults of a run whose student's tokenizer differs from the store's
DOCUMENTED = {"mode": "alm+exact", "alpha_ce": 0.3, "alm_temperature": 100.0, "exact_map": "prefix",
              "exact_rows": "aligned"}


def test_cross_tokenizer_defaults_are_the_documented_ones():
    from kdstream.distill.cross_tokenizer import CROSS_DEFAULTS, with_cross_defaults
    from kdstream.distill.options import DistillOptions

    assert CROSS_DEFAULTS == DOCUMENTED
    opts = DistillOptions(model="m", out="o", logits_store="s")
    assert opts.alpha_ce is None and opts.cross_tokenizer == "auto"
    assert opts.exact_map == DOCUMENTED["exact_map"] and opts.exact_rows == DOCUMENTED["exact_rows"]
    cross = with_cross_defaults(opts, DOCUMENTED["mode"])
    assert cross.alpha_ce == DOCUMENTED["alpha_ce"] and cross.alm_temperature == DOCUMENTED["alm_temperature"]
    same = with_cross_defaults(opts, None)  # a same-tokenizer run: no CE mixed in, ALM untouched
    assert same.alpha_ce == 0.0 and same.alm_temperature is None
    given = with_cross_defaults(replace(opts, alpha_ce=0.7, alm_temperature=3.0), "exact")  # a flag wins
    assert given.alpha_ce == 0.7 and given.alm_temperature == 3.0
    table = DOCS.read_text()
    tau = "`--temperature`" if DOCUMENTED["alm_temperature"] is None else f"{DOCUMENTED['alm_temperature']:g}"
    for row in (f"| `--cross-tokenizer auto` | `{DOCUMENTED['mode']}` |",
                f"| `--alpha-ce` | {DOCUMENTED['alpha_ce']:g} |",
                f"| `--alm-temperature` | {tau} |", f"| `--exact-map` | `{DOCUMENTED['exact_map']}` |",
                f"| `--exact-rows` | `{DOCUMENTED['exact_rows']}` |"):
        assert row in table, row
    help_text = " ".join(run_cli("distill", "--help").stdout.split())
    assert f"{DOCUMENTED['alpha_ce']:g} for a student whose tokenizer differs from the store's" in help_text
    assert f"auto = {DOCUMENTED['mode']} when the tokenizers differ" in help_text


def _config_only(directory: Path, tokenizer, *, vocab: int, hidden: int, layers: int) -> Path:
    """A GPT-NeoX config and tokenizer, no weights: distill initialises it from its seed."""
    from benchmarks.fixtures import tiny_gpt_neox_config

    tiny_gpt_neox_config(vocab, hidden=hidden, layers=layers, positions=4 * SEQ_LEN,
                         eos=tokenizer.eos_token_id).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


HELD_OUT, TRAIN = 64, 256  # the last rows: held out from teacher and student; the student's first rows


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory, tokenizer):
    """A teacher trained with CE on the whole demo corpus but its last HELD_OUT examples, and its
    top-16 store over all of it (the miniature of benchmarks/cross_tokenizer_pairs.py)."""
    from kdstream.data.demo_corpus import demo_documents

    d = tmp_path_factory.mktemp("trained_teacher")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents()))
    init = _config_only(d / "init", tokenizer, vocab=len(tokenizer), hidden=128, layers=2)
    run_cli("distill", "--model", init, "--dataset", corpus, "--loss", "ce", "--seq-len", SEQ_LEN,
            "--eval-examples", HELD_OUT, "--epochs", 1, "--lr", "2e-3", "--warmup-ratio", "0.05", "--out", d / "teacher")
    run_cli("precompute-logits", "--model", d / "teacher", "--dataset", corpus, "--out", d / "store.zarr",
            "--top-k", 16, "--seq-len", SEQ_LEN, "--backend", "hf", "--device", "cpu", "--logprob-encoding", "fp32")
    rows = sum(json.loads((d / "teacher" / "train_summary.json").read_text())[k] for k in ("examples", "held_out"))
    exclude = d / "exclude.txt"  # the student trains on the first TRAIN rows, is scored on the last HELD_OUT
    exclude.write_text("".join(f"{i}\n" for i in range(TRAIN, rows - HELD_OUT)))
    return d / "store.zarr", exclude


@pytest.mark.slow
def test_the_default_cross_tokenizer_student_beats_ce_on_held_out_text(trained_store, docs, tmp_path):
    """No flag but the student: distill picks the cross-tokenizer defaults; held-out bits per byte
    below the same student's CE run on the same examples."""
    from kdstream.text.tokenizers import train_bpe_tokenizer

    store, exclude = trained_store
    other = train_bpe_tokenizer(docs, 1024, tmp_path / "tok")  # another size than the teacher's 512
    student = _config_only(tmp_path / "student", other, vocab=len(other), hidden=64, layers=2)
    common = ("--logits-store", store, "--model", student, "--exclude", exclude, "--eval-examples", HELD_OUT,
              "--epochs", 2, "--batch-size", 16, "--lr", "1e-3")
    run_cli("distill", *common, "--loss", "ce", "--out", tmp_path / "ce")
    run_cli("distill", *common, "--out", tmp_path / "kd")
    ce, kd = (json.loads((tmp_path / n / "train_summary.json").read_text()) for n in ("ce", "kd"))
    options = (tmp_path / "kd" / "options.yaml").read_text()
    assert kd["cross_tokenizer"] == DOCUMENTED["mode"] and f"alpha_ce: {DOCUMENTED['alpha_ce']}" in options
    assert kd["held_out_bits_per_byte"] < ce["held_out_bits_per_byte"]
