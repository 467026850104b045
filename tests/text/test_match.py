"""The one tokenizer match rule (text/match.py) on real tokenizers and a real store."""
from __future__ import annotations

from tokenizers_for_alignment import sentencepiece_tokenizer

from kdstream.storage import open_store
from kdstream.text.match import fingerprint_sha, recorded_fingerprint, tokenizers_match
from kdstream.text.tokenizers import has_tokenizer, load_tokenizer, tokenizer_fingerprint


def test_a_tokenizer_matches_itself_its_saved_copy_and_the_store_it_wrote(tmp_path, tokenizer, teacher_dir,
                                                                          teacher_store):
    tokenizer.save_pretrained(str(tmp_path / "copy"))
    store = open_store(str(teacher_store))
    assert tokenizers_match(tokenizer, load_tokenizer(tmp_path / "copy"))
    assert tokenizers_match(tokenizer, store) and tokenizers_match(store, tokenizer)
    assert tokenizers_match(tokenizer_fingerprint(tokenizer), recorded_fingerprint(store)["sha256"])
    assert fingerprint_sha(store) == tokenizer_fingerprint(tokenizer)["sha256"]


def test_another_tokenizer_or_an_unknown_side_does_not_match(tokenizer, docs, teacher_store):
    other = sentencepiece_tokenizer(docs, 400)
    assert not tokenizers_match(tokenizer, other)
    assert not tokenizers_match(other, open_store(str(teacher_store)))
    assert not tokenizers_match(None, None) and not tokenizers_match(tokenizer, {})


def test_the_tokenizer_file_probe(tmp_path, tokenizer, teacher_dir):
    assert has_tokenizer(teacher_dir) and not has_tokenizer(tmp_path)
