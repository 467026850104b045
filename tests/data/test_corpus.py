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
