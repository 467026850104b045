"""`kdstream store card`: a Hub dataset card whose numbers are `store info` / `store stats`'s,
written only where kdstream may write, and a README.md in the store that no reader minds."""
import json
import shutil
import uuid
import warnings

import numpy as np
import pytest
import yaml

from helpers import run_cli
from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store
from kdstream.storage.card import MARKER, card_text, is_own_card, precompute_command, size_category, store_card
from kdstream.storage.info import store_info
from kdstream.storage.stats import store_stats
from kdstream.storage.verify import verify_store

HUB_KEYS = {"license", "pretty_name", "tags", "size_categories", "viewer", "kdstream"}
# the card's kdstream mapping quotes these from `store stats --json` unchanged
FROM_STATS = ("examples", "tokens", "seq_len", "k", "vocab_size", "bytes_on_disk", "bytes_per_token",
              "logprob_encoding", "logprob_max_abs_error", "topk_mass_mean", "target_in_topk")


@pytest.fixture
def store(teacher_store, tmp_path):
    """A private copy of the session's real store (vLLM-written, format version 4)."""
    return shutil.copytree(teacher_store, tmp_path / "teacher.zarr")


def front_matter(text: str) -> tuple[dict, str]:
    """(the YAML between the leading `---` lines, the Markdown after it)."""
    assert text.startswith("---\n"), text[:200]
    head, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(head)
    assert isinstance(meta, dict), head
    return meta, body


def test_card_metadata_and_numbers_are_store_info_and_stats(store):
    proc = run_cli("store", "card", store)
    card = store / "README.md"
    assert proc.stdout.strip() == f"wrote {card}"
    meta, body = front_matter(card.read_text())
    assert HUB_KEYS <= set(meta)
    assert meta["license"] == "other" and meta["viewer"] is False and meta["size_categories"] == ["n<1K"]
    assert {"knowledge-distillation", "logits", "kdstream", "zarr"} <= set(meta["tags"])
    assert meta["pretty_name"] == "teacher0 top-8 logits"

    # printed after the card is in the store: the README changes none of them
    info = json.loads(run_cli("store", "info", store, "--json").stdout)
    stats = json.loads(run_cli("store", "stats", store, "--json").stdout)
    stats_text = run_cli("store", "stats", store).stdout
    kd, attrs = meta["kdstream"], info["attributes"]
    assert kd["store_identity"] == info["identity"] == stats["store_identity"] is not None
    for key in FROM_STATS:
        assert kd[key] == stats[key], key
    assert kd["format"] == attrs["format"] and kd["format_version"] == attrs["format_version"] == 4
    assert kd["teacher"] == {key: attrs["teacher"][key] for key in ("name", "config_sha256", "weights_fingerprint")}
    assert kd["tokenizer"] == attrs["tokenizer"] and kd["corpus"] == attrs["corpus"]
    assert kd["targets"] == attrs["targets"] == "topk" and kd["source_top_k"] == attrs["source_top_k"]
    assert kd["engine"] == {key: attrs["engine"][key] for key in ("name", "version", "dtype")}

    # the table shows what `store stats` prints, formatted the same way
    for label in ("bytes on disk", "bytes per token", "top-k mass", "target NLL"):
        printed = next(line for line in stats_text.splitlines() if line.startswith(label + ":"))
        assert f"| {label} | {printed.split(':', 1)[1].strip()} |" in body, label
    assert f"`{info['identity']}`" in body
    assert body.lstrip().startswith(MARKER[:-3] + "sha256:") and is_own_card(card.read_text())
    # how it was made, and the three lines that read it
    assert "precompute-logits --model" in body and "--top-k 8 --seq-len 64" in body and "--overwrite" not in body
    assert ('from kdstream.torch import StoreDataset\nds = StoreDataset("hf://datasets/ORG/NAME")   # or a local '
            'path / s3:// URL\nbatch = ds[0]  # input_ids (L,), topk_ids (L-1, k), topk_logprobs (L-1, k), ...') in body
    assert f'open_store("hf://datasets/ORG/NAME", identity="{info["identity"]}")' in body
    assert "teacher's license" in body


def test_a_card_in_the_store_changes_no_reader(store):
    """verify, open_store (no warning either), stats, info and finalize see the same store with a
    README.md at its root; listing the group with plain zarr only warns about it."""
    before = store_stats(str(store))
    ident = open_store(str(store)).identity
    run_cli("store", "card", store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = open_store(str(store))
        assert reopened.identity == ident
        np.testing.assert_array_equal(reopened[0:4]["topk_ids"], open_store(str(store))[0:4]["topk_ids"])
        assert verify_store(str(store)).ok
        assert store_stats(str(store)) == before  # bytes_on_disk counts the store's objects, not the README
        assert store_info(str(store))["identity"] == ident
    assert run_cli("store", "verify", store).stdout.startswith("ok: ")
    assert run_cli("store", "finalize", store).stdout.startswith("already complete")


def test_a_readme_in_an_incomplete_store_does_not_stop_its_resume(tmp_path):
    """precompute resumes an incomplete store through StoreWriter: a README.md beside its arrays
    (a user's, as `store card` refuses incomplete stores) is left alone and the store completes."""
    rng = np.random.default_rng(0)
    n, L, k = 8, 8, 4
    rows = {"input_ids": rng.integers(0, 100, (n, L)), "example_id": np.arange(n), "doc_index": np.arange(n),
            "topk_ids": np.tile(np.arange(k), (n, L - 1, 1)),
            "topk_logprobs": np.tile(np.log([0.4, 0.2, 0.1, 0.05]).astype(np.float32), (n, L - 1, 1)),
            "target_logprob": np.full((n, L - 1), np.log(0.4), np.float32), "target_rank": np.ones((n, L - 1), int)}
    url = str(tmp_path / "s.zarr")

    def writer():
        return StoreWriter(url, num_examples=n, seq_len=L, k=k, vocab_size=100, attrs={"run": 1}, chunk_rows=4)

    first = writer()
    first.write_chunk(0, {key: v[:4] for key, v in rows.items()})
    (tmp_path / "s.zarr" / "README.md").write_text("# notes\n")
    with pytest.raises(KdError, match="incomplete"):
        store_card(url)
    resumed = writer()
    assert resumed.resumed == {0}
    resumed.write_chunk(1, {key: v[4:] for key, v in rows.items()})
    resumed.finalize()
    assert verify_store(url).ok and len(open_store(url)) == n
    assert (tmp_path / "s.zarr" / "README.md").read_text() == "# notes\n"


def test_never_replaces_a_readme_kdstream_did_not_write(store, error_line, digest):
    card = store / "README.md"
    card.write_text("# Our notes\n")
    line = error_line(run_cli("store", "card", store, check=False))
    assert "README.md exists and was not written by kdstream" in line and "--overwrite" in line
    assert card.read_text() == "# Our notes\n"

    run_cli("store", "card", store, "--overwrite", "--license", "apache-2.0")
    meta, _ = front_matter(card.read_text())
    assert meta["license"] == "apache-2.0"
    # a card kdstream wrote is replaced without --overwrite
    run_cli("store", "card", store, "--name", "My teacher logits", "--repo", "acme/teacher-logits")
    meta, body = front_matter(card.read_text())
    assert meta["pretty_name"] == "My teacher logits" and "# My teacher logits" in body
    assert meta["license"] == "other"
    assert 'StoreDataset("hf://datasets/acme/teacher-logits")' in body
    assert sorted(p.name for p in store.iterdir() if p.is_file()) == ["README.md", "zarr.json"]  # no temp file left

    # --out: a folder gets README.md, a path is the file; neither touches the store
    before = digest(store)
    out = store.parent / "repo"
    out.mkdir()
    run_cli("store", "card", store, "--out", out)
    run_cli("store", "card", store, "--out", out / "CARD.md")
    assert (out / "README.md").read_text() == (out / "CARD.md").read_text() == store_card(str(store))
    assert digest(store) == before


def test_refused_with_one_line(tmp_path, store, error_line):
    rows_store = tmp_path / "partial.zarr"
    StoreWriter(str(rows_store), num_examples=4, seq_len=8, k=2, vocab_size=50, attrs={}, chunk_rows=4)
    line = error_line(run_cli("store", "card", rows_store, check=False))
    assert "is incomplete" in line
    assert not (rows_store / "README.md").exists()
    assert "not a Hub license id" in error_line(run_cli("store", "card", store, "--license", "unknown", check=False))
    assert "no logit store" in error_line(run_cli("store", "card", tmp_path / "nothing.zarr", check=False))
    assert "does not exist" in error_line(run_cli("store", "card", store, "--out", tmp_path / "no" / "R.md",
                                                  check=False))


def test_remote_store_needs_out_and_gives_the_same_numbers(store, http_root, tmp_path, error_line):
    root, base = http_root
    shutil.copytree(store, root / "teacher.zarr")
    url = f"{base}/teacher.zarr"
    assert "is remote: pass --out" in error_line(run_cli("store", "card", url, check=False))
    run_cli("store", "card", url, "--out", tmp_path / "card.md")
    meta, _ = front_matter((tmp_path / "card.md").read_text())
    stats = json.loads(run_cli("store", "stats", url, "--json").stdout)
    for key in FROM_STATS:
        assert meta["kdstream"][key] == stats[key], key
    assert meta["kdstream"]["store_identity"] == open_store(str(store)).identity


def test_the_card_is_the_same_read_through_another_fsspec_filesystem(store):
    """The card of the store copied into fsspec's memory:// filesystem is the local store's card,
    byte for byte: nothing in it depends on where the store is read from."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/kdstream-card-{uuid.uuid4().hex}"
    fs.put(str(store), f"{root}/teacher.zarr", recursive=True)
    try:
        assert store_card(f"memory://{root}/teacher.zarr") == store_card(str(store))
    finally:
        fs.rm(root, recursive=True)


def test_size_categories_and_the_recorded_command():
    assert [size_category(n) for n in (0, 999, 1000, 99_999, 100_000, 10**12)] == \
        ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "n>1T"]
    cmd = precompute_command({"model": "/m dir", "top_k": 64, "tokenizer": None, "overwrite": True,
                              "engine": {"dtype": "auto", "enforce_eager": False, "seed": 0}})
    assert cmd == "precompute-logits --model '/m dir' --top-k 64 --dtype auto --no-enforce-eager --seed 0"


def test_card_text_of_a_sampled_store_without_identity():
    """A card renders from the two dicts alone: a sampled, format version 3 store (no identity)."""
    info = {"attributes": {"format": "kdstream-logits", "format_version": 3, "complete": True, "targets": "sampled",
                           "source_top_k": 64, "encoding": {"topk_logprobs": "sampled", "samples": 50},
                           "teacher": {"name": "big"}, "tokenizer": {"sha256": "ab", "vocab_size": 10}}}
    stats = {"store_identity": None, "examples": 2000, "seq_len": 16, "k": 50, "vocab_size": 10, "tokens": 32000,
             "bytes_on_disk": None, "bytes_per_token": None, "rows_read": 100, "topk_mass_mean": 0.9,
             "topk_mass_p10": 0.8, "target_in_topk": 0.5, "mean_target_nll": 1.0, "logprob_encoding": "sampled",
             "logprob_max_abs_error": None}
    meta, body = front_matter(card_text(info, stats))
    assert meta["pretty_name"] == "big sampled logits (50 draws)" and meta["size_categories"] == ["1K<n<10K"]
    assert meta["kdstream"]["samples"] == 50 and meta["kdstream"]["store_identity"] is None
    assert "| bytes per token | unknown |" in body and "| rows read for the fidelity figures | 100 of 2000 |" in body
    assert 'open_store("hf://datasets/ORG/NAME")' in body and "records no precompute options" in body
