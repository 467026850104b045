"""extract-eval with vLLM on a model trained to memorize part of the store."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import NUM_EXAMPLES, run_cli
from kdstream.evaluate.metrics import match_metrics

pytestmark = pytest.mark.slow
TRAINED = 8  # examples 0..7 are trained on; the rest are excluded


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory, teacher_store, student_init_dir):
    """A 1-layer student trained (CE, many epochs) on 8 of the 24 stored examples only."""
    d = tmp_path_factory.mktemp("memorizer")
    exclude = d / "exclude.txt"
    exclude.write_text("\n".join(str(i) for i in range(TRAINED, NUM_EXAMPLES)) + "\n")
    run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--loss", "ce",
            "--epochs", 60, "--batch-size", 8, "--lr", "3e-3", "--warmup-ratio", 0, "--exclude", exclude,
            "--out", d / "model")
    return d / "model"


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, memorizer, teacher_store):
    out = tmp_path_factory.mktemp("eval") / "memorizer"
    run_cli("extract-eval", "--model", memorizer, "--logits-store", teacher_store, "--prefix-len", 16,
            "--suffix-len", 16, "--dtype", "float32", "--out", out)
    return out


def test_summary_and_results(evaluation):
    summary = json.loads((evaluation / "summary.json").read_text())
    table = pq.read_table(evaluation / "results.parquet").to_pandas()
    assert summary["examples"] == NUM_EXAMPLES == len(table)
    assert summary["memorized"] == int(table["exact_match"].sum())
    assert summary["rate"] == pytest.approx(summary["memorized"] / NUM_EXAMPLES)
    assert set(table.columns) >= {"example_id", "exact_match", "frac_matched", "prefix_match_len", "generated_ids"}
    assert all(len(g) == 16 for g in table["generated_ids"])


def test_only_trained_examples_are_memorized(evaluation):
    table = pq.read_table(evaluation / "results.parquet").to_pandas()
    memorized = set(table.loc[table["exact_match"], "example_id"])
    assert memorized, "the memorizer reproduced nothing: the test model is too weak"
    assert memorized <= set(range(TRAINED)), f"excluded examples reproduced: {memorized}"
    assert len(memorized) < NUM_EXAMPLES


def test_vllm_greedy_equals_transformers_greedy(memorizer, evaluation, teacher_store):
    """The student checkpoint loads in transformers too, and both engines decode the same tokens."""
    from transformers import AutoModelForCausalLM

    from kdstream.storage import open_store

    model = AutoModelForCausalLM.from_pretrained(str(memorizer), dtype=torch.float32).eval()
    ids = torch.from_numpy(open_store(str(teacher_store))[0:6]["input_ids"][:, :16])
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)[:, 16:]
    table = pq.read_table(evaluation / "results.parquet").to_pandas().set_index("example_id")
    vllm = np.stack([table.loc[i, "generated_ids"] for i in range(6)])
    np.testing.assert_array_equal(vllm, hf.numpy())


def test_match_metrics():
    truth = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    gen = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [9, 2, 3, 4]])
    m = match_metrics(gen, truth)
    assert m["exact"].tolist() == [True, False, False]
    assert m["frac_matched"].tolist() == [1.0, 0.75, 0.75]
    assert m["prefix_match_len"].tolist() == [4, 2, 0]


def test_one_changed_token_is_an_approximate_not_an_exact_match():
    from kdstream.evaluate.metrics import edit_distance

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 100, size=(4, 50))
    gen = truth.copy()
    gen[1, 20] = (gen[1, 20] + 1) % 100  # one substitution
    gen[2] = np.roll(truth[2], 1)  # shifted by one: 2 edits
    gen[3] = rng.integers(0, 100, size=50)  # unrelated
    m = match_metrics(gen, truth)
    assert m["exact"].tolist() == [True, False, False, False]
    assert m["approx"].tolist() == [True, True, True, False]
    assert m["edit_distance"][:3].tolist() == [0, 1, 2]
    # against a plain reference implementation
    def ref(a, b):
        d = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, d[0] = d[0], i
            for j, y in enumerate(b, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
        return d[-1]
    a, b = rng.integers(0, 4, size=(6, 9)), rng.integers(0, 4, size=(6, 9))
    assert edit_distance(a, b).tolist() == [ref(x, y) for x, y in zip(a, b)]
