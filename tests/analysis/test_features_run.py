"""`kdstream features` (analysis/features_run.py) over a tiny store written from a HF teacher."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from analysis_dirs import EXAMPLES
from click.testing import CliRunner

from helpers import VOCAB, make_gpt_neox
from kdstream.analysis.features_run import FeaturesOptions, run_features
from kdstream.analysis.files import FEATURE_COLUMNS
from kdstream.cli.analysis import features
from kdstream.errors import KdError


def test_features_one_row_per_example(scored, store):
    from kdstream.storage import open_store

    t_dir, t_sum, b_dir, _ = scored
    frame = pq.read_table(t_dir / "features.parquet").to_pandas()
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert len(frame) == EXAMPLES == t_sum["examples"]
    np.testing.assert_array_equal(frame["example_id"], open_store(str(store)).read(0, EXAMPLES, ("example_id",))["example_id"])
    assert frame.notna().all().all()
    assert {"options.yaml", "summary.json", "features.parquet"} <= {p.name for p in t_dir.iterdir()}
    assert yaml.safe_load((t_dir / "options.yaml").read_text())["prefix_len"] == 16
    assert not t_dir.with_name("teacher.partial").exists()
    assert json.loads((t_dir / "summary.json").read_text())["k"] == VOCAB


def test_teacher_against_its_own_store(scored):
    """k = V: KL(teacher ‖ teacher) ≈ 0, and its ppl is the store's exp(−mean target_logprob)."""
    frame = pq.read_table(scored[0] / "features.parquet").to_pandas()
    np.testing.assert_allclose(frame["teacher_kl"], 0.0, atol=1e-4)
    np.testing.assert_allclose(frame["ppl"], frame["teacher_ppl_from_store"], rtol=1e-4)
    np.testing.assert_allclose(frame["zlib_ratio"], np.log(frame["ppl"]) / frame["zlib_entropy"], rtol=1e-12)


def test_baseline_features(scored):
    t = pq.read_table(scored[0] / "features.parquet").to_pandas()
    b = pq.read_table(scored[2] / "features.parquet").to_pandas()
    assert (b["teacher_kl"] > 1e-3).all()  # another random model: KL(teacher ‖ baseline) > 0
    np.testing.assert_array_equal(b["zlib_entropy"], t["zlib_entropy"])  # text features depend on the text only
    np.testing.assert_array_equal(b["teacher_ppl_from_store"], t["teacher_ppl_from_store"])
    assert not np.allclose(b["ppl"], t["ppl"])


def test_features_read_whole_chunks(monkeypatch, tmp_path, models, store):
    from kdstream.storage.reader import LogitStore

    calls = []
    original = LogitStore.read

    def spy(self, start, stop, keys=None):
        calls.append((start, stop))
        return original(self, start, stop, keys) if keys else original(self, start, stop)

    monkeypatch.setattr(LogitStore, "read", spy)
    out = run_features(FeaturesOptions(model=str(models[1]), logits_store=str(store), out=str(tmp_path / "f"),
                                       prefix_len=8, suffix_len=8, max_examples=20))
    assert out["examples"] == 20
    assert calls == [(0, 8), (8, 16), (16, 20)]
    assert len(pq.read_table(tmp_path / "f" / "features.parquet")) == 20


def test_features_refuses_other_tokenizer_and_existing_output(tmp_path, store, docs, scored):
    from kdstream.text.tokenizers import train_bpe_tokenizer

    other = train_bpe_tokenizer(docs[:60], 300, tmp_path / "tok")
    model = make_gpt_neox(tmp_path / "other", other, layers=1, hidden=64, heads=1)
    with pytest.raises(KdError, match="tokenizer of .* differs from the store's"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(tmp_path / "o"),
                                     prefix_len=8, suffix_len=8))
    assert not (tmp_path / "o").exists()
    with pytest.raises(KdError, match="--overwrite"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(scored[0])))
    with pytest.raises(KdError, match="exceeds"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(tmp_path / "o"),
                                     prefix_len=30, suffix_len=10))
    with pytest.raises(KdError):
        FeaturesOptions(model="m", logits_store="s", out="o", batch_size=0)



def test_features_through_click(tmp_path, models, store):
    """The click command writes what run_features writes."""
    runner = CliRunner()

    r = runner.invoke(features, ["--model", str(models[1]), "--logits-store", str(store), "--out",
                                 str(tmp_path / "feat"), "--prefix-len", "8", "--suffix-len", "8", "--max-examples", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["examples"] == 4


def test_bits_per_byte_column(scored, store, tokenizer):
    """ppl's CE in bits per UTF-8 byte of tokens 1..L-1: ln(ppl) · (L-1) / (ln 2 · bytes)."""
    from kdstream.storage import open_store
    from kdstream.text.token_bytes import token_byte_lengths

    for out in (scored[0], scored[2]):
        frame = pq.read_table(out / "features.parquet").to_pandas()
        ids = open_store(str(store)).read(0, EXAMPLES, ("input_ids",))["input_ids"]
        num_bytes = token_byte_lengths(tokenizer, ids[:, 1:]).sum(1)
        expected = np.log(frame["ppl"]) * (ids.shape[1] - 1) / (np.log(2) * num_bytes)
        np.testing.assert_allclose(frame["bits_per_byte"], expected, rtol=1e-6)
        assert list(frame.columns).index("bits_per_byte") == list(frame.columns).index("ppl") + 1
