"""Several stores read as one (storage/union.py): reads equal the parts' reads, example ids
shifted as documented, a stable identity of its own, and mismatched or repeated parts refused.

Real stores: the session's ``teacher_store`` (vLLM, 24 examples) and ``second_store`` (the same
teacher over another corpus, --backend hf, 8 examples in chunks of 3); one store of another
teacher written here; synthetic stores (the real writer) where only attributes matter."""
import hashlib
import shutil

import numpy as np
import pytest
from test_store import as_version_3, synthetic, write

from helpers import make_gpt_neox, precompute_args, run_cli
from kdstream.errors import KdError
from kdstream.storage import LogitStore, StoreUnion, open_store, open_stores
from kdstream.storage.reader import KEYS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def other_teacher_store(tmp_path_factory, tokenizer, corpus_file):
    """4 examples from a teacher with other weights (same tokenizer and shapes)."""
    d = tmp_path_factory.mktemp("other_teacher")
    teacher = make_gpt_neox(d / "teacher", tokenizer, seed=2)
    run_cli(*precompute_args(teacher, corpus_file, d / "other.zarr", "--max-examples", 4, "--backend", "hf"))
    return d / "other.zarr"


def test_union_reads_equal_the_parts_reads_with_shifted_ids(teacher_store, second_store):
    a, b = open_store(str(teacher_store)), open_store(str(second_store))
    u = open_stores(f"{teacher_store},{second_store}")
    assert isinstance(u, StoreUnion) and len(u) == len(a) + len(b) == 32
    ida, idb = a.read(0, len(a), ("example_id",))["example_id"], b.read(0, len(b), ("example_id",))["example_id"]
    assert ida[0] == idb[0] == 0  # each part counts from the start of its own corpus
    offset = int(ida.max()) + 1
    np.testing.assert_array_equal(u.read(0, len(u), ("example_id",))["example_id"], np.concatenate([ida, idb + offset]))

    def expect(start, stop):  # the parts' own reads, concatenated, part 1's ids shifted
        pieces = []
        if start < len(a):
            pieces.append(a.read(start, min(stop, len(a)), KEYS))
        if stop > len(a):
            got = b.read(max(0, start - len(a)), stop - len(a), KEYS)
            pieces.append(got | {"example_id": got["example_id"] + offset})
        if not pieces:
            return a.read(0, 0, KEYS)
        return {k: np.concatenate([p[k] for p in pieces]) for k in KEYS}

    for start, stop in [(2, 9), (20, 28), (22, 32), (25, 30), (0, 32), (24, 24)]:  # within, across, empty
        got, want = u.read(start, stop), expect(start, stop)
        assert set(got) == set(KEYS)
        for key in KEYS:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} rows {start}:{stop}")
    row = u[25]  # store[i]: part 1's row 1
    assert row["topk_ids"].shape == (a.seq_len - 1, a.k) and int(row["example_id"]) == idb[1] + offset
    np.testing.assert_array_equal(row["topk_logprobs"], b[1]["topk_logprobs"])
    np.testing.assert_array_equal(u[-1]["input_ids"], b[-1]["input_ids"])
    np.testing.assert_array_equal(u[22:26]["target_rank"], expect(22, 26)["target_rank"])
    with pytest.raises(IndexError):
        u[0:8:2]
    with pytest.raises(IndexError):
        u[32]


def test_union_describes_itself_and_has_a_stable_identity_of_its_own(teacher_store, second_store):
    a, b = open_store(str(teacher_store)), open_store(str(second_store))
    u = open_stores([str(teacher_store), str(second_store)])
    assert u.url == f"{teacher_store},{second_store}" and u.parts[1].url == str(second_store)
    assert (u.seq_len, u.k, u.vocab_size, u.chunk_rows) == (a.seq_len, a.k, a.vocab_size, a.chunk_rows)
    assert u.encoding == a.encoding and u.sampled is False
    assert u.attrs["num_examples"] == 32 and u.attrs["parts"] == [str(teacher_store), str(second_store)]
    assert u.attrs["teacher"] == a.attrs["teacher"] and "manifest" not in u.attrs
    assert a.attrs["num_examples"] == 24  # the part's own attrs untouched
    assert u.identity == hashlib.sha256(f"{a.identity}\n{b.identity}".encode()).hexdigest()
    assert u.identity == open_stores(f"{teacher_store},{second_store}").identity  # stable across opens
    assert u.identity not in (a.identity, b.identity)
    assert open_stores(f"{second_store},{teacher_store}").identity != u.identity  # the order is part of it
    assert u.part_identities == (a.identity, b.identity)
    # one URL: exactly open_store
    one = open_stores(str(teacher_store))
    assert type(one) is LogitStore and one.identity == a.identity
    assert open_stores([str(teacher_store)]).identity == a.identity
    # reopening as a DataLoader worker does: the same union, or a one-line refusal naming it
    assert open_stores(u.url, identity=u.identity, part_identities=u.part_identities).identity == u.identity
    with pytest.raises(KdError, match="not the stores this run started with"):
        open_stores(u.url, identity=a.identity)
    with pytest.raises(KdError, match=f"store {second_store} is not the store this run started with"):
        open_stores(u.url, part_identities=(a.identity, a.identity))


def test_a_union_of_stores_without_identity_reads_and_has_none(tmp_path):
    write(tmp_path / "p.zarr", synthetic(5, seed=1))
    write(tmp_path / "q.zarr", synthetic(7, seed=2), chunk_rows=3)
    as_version_3(tmp_path / "q.zarr")
    u = open_stores([str(tmp_path / "p.zarr"), str(tmp_path / "q.zarr")])
    assert u.identity is None and len(u) == 12
    ids = u.read(0, 12, ("example_id",))["example_id"]  # synthetic ids are 100.. in each part
    np.testing.assert_array_equal(ids, np.concatenate([np.arange(5) + 100, np.arange(7) + 100 + 105]))
    np.testing.assert_array_equal(u.read(3, 9, ("topk_ids",))["topk_ids"],
                                  np.concatenate([open_store(str(tmp_path / "p.zarr")).read(3, 5, ("topk_ids",))["topk_ids"],
                                                  open_store(str(tmp_path / "q.zarr")).read(0, 4, ("topk_ids",))["topk_ids"]]))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_stores_of_another_teacher_are_refused(teacher_store, other_teacher_store):
    with pytest.raises(KdError) as exc:
        open_stores([str(teacher_store), str(other_teacher_store)])
    line = one_line(exc)
    assert f"stores {teacher_store} and {other_teacher_store} differ in teacher.weights_fingerprint" in line
    assert "one teacher and tokenizer" in line


def test_one_store_twice_is_refused_by_path_and_by_identity(tmp_path, teacher_store, second_store):
    with pytest.raises(KdError) as exc:
        open_stores(f"{teacher_store},{second_store},{teacher_store}/")
    assert f"stores {teacher_store} and {teacher_store}/ are the same store" in one_line(exc)
    copy = shutil.copytree(teacher_store, tmp_path / "copy.zarr")
    with pytest.raises(KdError) as exc:
        open_stores([str(teacher_store), str(copy)])
    line = one_line(exc)
    assert f"stores {teacher_store} and {copy} are the same store" in line and "list each store once" in line


def test_stores_of_another_encoding_or_k_are_refused(tmp_path):
    rows = synthetic(4)
    write(tmp_path / "qdelta.zarr", rows)
    write(tmp_path / "fp32.zarr", rows, encoding="fp32")
    with pytest.raises(KdError) as exc:
        open_stores([str(tmp_path / "qdelta.zarr"), str(tmp_path / "fp32.zarr")])
    line = one_line(exc)
    assert "differ in encoding." in line and "--logprob-encoding" in line
    k = rows["topk_ids"].shape[-1] - 2
    from kdstream.storage import StoreWriter

    w = StoreWriter(str(tmp_path / "k.zarr"), num_examples=4, seq_len=rows["input_ids"].shape[1], k=k,
                    vocab_size=open_store(str(tmp_path / "qdelta.zarr")).vocab_size,
                    attrs={"tokenizer": {"sha256": "x"}}, chunk_rows=4)
    w.append({key: v[..., :k] if key.startswith("topk") else v for key, v in rows.items()})
    w.finalize()
    with pytest.raises(KdError) as exc:
        open_stores([str(tmp_path / "qdelta.zarr"), str(tmp_path / "k.zarr")])
    assert f"differ in k ({rows['topk_ids'].shape[-1]} vs {k})" in one_line(exc)


def test_a_missing_part_is_named(tmp_path, teacher_store):
    with pytest.raises(KdError) as exc:
        open_stores(f"{teacher_store},{tmp_path / 'nope.zarr'}")
    assert f"no logit store at {tmp_path / 'nope.zarr'}" in one_line(exc)
    with pytest.raises(KdError, match="names no store"):
        open_stores(" , ")


@pytest.mark.parametrize("command", [
    ["extract-eval", "--method", "store"],
    ["features", "--model", "m"],
], ids=["extract-eval", "features"])
def test_single_store_commands_refuse_a_comma_separated_value(tmp_path, teacher_store, second_store, command,
                                                              error_line):
    proc = run_cli(*command, "--logits-store", f"{teacher_store},{second_store}", "--out", tmp_path / "out",
                   check=False)
    line = error_line(proc)
    assert "reads one store" in line and "only distill reads several" in line, line
    assert not (tmp_path / "out").exists()
