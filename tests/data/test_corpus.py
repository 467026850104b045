import json

import pytest

from kdstream.data.corpus import load_corpus
from kdstream.data.demo_corpus import demo_documents
from kdstream.errors import KdError


def test_demo_corpus_is_deterministic_and_large_enough():
    a, b = demo_documents(), demo_documents()
    assert a == b
    assert sum(map(len, a)) > 200_000  # enough for the demo's 400 x 128-token examples
    assert load_corpus("demo").fingerprint == load_corpus("demo").fingerprint


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "txt", "saved"])
def test_local_formats_give_the_same_documents(tmp_path, kind):
    import datasets

    docs = ["first document about zarr", "second one, about vllm", "third: distillation"]
    if kind == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    elif kind == "json":
        path = tmp_path / "c.json"
        path.write_text(json.dumps([{"body": d} for d in docs]))
    elif kind == "parquet":
        path = tmp_path / "c.parquet"
        datasets.Dataset.from_dict({"body": docs}).to_parquet(str(path))
    elif kind == "txt":
        path = tmp_path / "c.txt"
        path.write_text("\n\n".join(docs) + "\n")
    else:
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": docs})}).save_to_disk(str(path))
    corpus = load_corpus(str(path), text_field="body")
    assert [t.strip() for t in corpus.texts] == docs
    assert len(corpus.fingerprint) == 64


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(KdError, match="not found"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(KdError, match="--text-field"):
        load_corpus(str(path), text_field="text")
    bad = tmp_path / "c.csv"
    bad.write_text("a,b\n")
    with pytest.raises(KdError, match="extension"):
        load_corpus(str(bad))


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_text_that_is_not_utf8_is_named_with_its_byte_and_offset(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    good = (json.dumps({"text": "plain ascii"}) + "\n").encode() if suffix == ".jsonl" else b"plain ascii\n\n"
    path.write_bytes(good + "caf\xe9\n".encode("latin-1"))  # é in Latin-1: 0xe9, not UTF-8
    with pytest.raises(KdError, match=rf"not UTF-8 text \(byte 0xe9 at offset {len(good) + 3}\): re-encode"):
        load_corpus(str(path))


def test_utf8_check_carries_a_character_across_blocks(tmp_path):
    from kdstream.data.corpus import _TEXT_BLOCK, check_text_file

    path = tmp_path / "c.txt"
    head = b"a" * (_TEXT_BLOCK - 1) + "é".encode()  # é's two bytes straddle the first block's end
    path.write_bytes(head + b"\n\nok\n")
    check_text_file(path, "text")  # valid: no error
    path.write_bytes(head + b"\n\nok \xff\n")
    with pytest.raises(KdError, match=f"byte 0xff at offset {len(head) + 5}"):
        check_text_file(path, "text")
    path.write_bytes(b"ok\n\xc3")  # cut inside a character at the end of the file
    with pytest.raises(KdError, match="byte 0xc3 at offset 3"):
        check_text_file(path, "text")


@pytest.mark.parametrize("content", [b"", b"\n  \n", b'{"text": ""}\n{"text": "  "}\n'])
def test_a_dataset_without_text_is_one_error(tmp_path, content):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(KdError, match=f"dataset {path} has no text in field 'text'"):
        load_corpus(str(path))
