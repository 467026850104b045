import numpy as np
import pytest

from kdstream.data.examples import pack_examples
from kdstream.errors import KdError
from kdstream.text.tokenizers import tokenizer_fingerprint, train_bpe_tokenizer


def test_packing_is_a_prefix_of_the_eos_separated_token_stream(tokenizer, docs):
    ex = pack_examples(docs, tokenizer, seq_len=32)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(stream) // 32
    assert ex.input_ids.shape == (n, 32)
    np.testing.assert_array_equal(ex.input_ids.reshape(-1), np.asarray(stream[: n * 32]))
    np.testing.assert_array_equal(ex.example_id, np.arange(n))
    # doc_index: the document holding each example's first token
    starts = np.cumsum([0] + [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs])
    for i in (0, n // 2, n - 1):
        assert starts[ex.doc_index[i]] <= i * 32 < starts[ex.doc_index[i] + 1]


def test_ids_are_stable_under_max_examples(tokenizer, docs):
    full = pack_examples(docs, tokenizer, seq_len=32)
    head = pack_examples(docs, tokenizer, seq_len=32, max_examples=5)
    np.testing.assert_array_equal(head.input_ids, full.input_ids[:5])
    np.testing.assert_array_equal(head.example_id, full.example_id[:5])


def test_too_little_text_is_refused(tokenizer):
    with pytest.raises(KdError, match="seq-len"):
        pack_examples(["tiny"], tokenizer, seq_len=256)


def test_tokenizer_fingerprint_tells_tokenizers_apart(tmp_path, tokenizer, docs):
    same = tokenizer_fingerprint(tokenizer)
    assert same == tokenizer_fingerprint(tokenizer)
    other = train_bpe_tokenizer(docs, 400, tmp_path)
    assert tokenizer_fingerprint(other)["sha256"] != same["sha256"]
