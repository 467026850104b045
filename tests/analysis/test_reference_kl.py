"""analysis.reference_kl and `kdstream store stats --reference-model`: the KL a store loses
against the full teacher (moved out of storage/, which loads no model)."""
import json

import pytest
from click.testing import CliRunner

from kdstream.analysis.reference_kl import reference_kl
from kdstream.cli.store import store as store_cli
from kdstream.storage import StoreWriter


@pytest.mark.slow
def test_reference_kl_on_the_tiny_teacher(teacher_store, teacher_dir, tmp_path):
    """KL(full teacher || store) is >= 0, small for the top-8 store, larger for a top-2 store cut
    from it; over top-k + bucket only the encoding's quantization (and vLLM vs HF noise) remains."""
    from kdstream.storage import open_store

    src = open_store(str(teacher_store))
    rows = src[:]
    top2 = tmp_path / "top2.zarr"
    w = StoreWriter(str(top2), num_examples=len(src), seq_len=src.seq_len, k=2, vocab_size=src.vocab_size, attrs={})
    w.append({**{key: rows[key] for key in ("input_ids", "example_id", "doc_index", "target_logprob", "target_rank")},
              "topk_ids": rows["topk_ids"][..., :2], "topk_logprobs": rows["topk_logprobs"][..., :2]})
    w.finalize()
    k8 = reference_kl(str(teacher_store), str(teacher_dir), examples=4, device="cpu")
    k2 = reference_kl(str(top2), str(teacher_dir), examples=4)
    assert k8["kl_positions"] == 4 * (src.seq_len - 1)
    assert 0 <= k8["kl_full_mean"] < k2["kl_full_mean"]
    # quantization alone: an error of e <= 0.0096 nats per logprob costs O(e^2) nats of KL
    assert -1e-6 <= k8["kl_bucket_mean"] < 1e-3 and -1e-6 <= k2["kl_bucket_mean"] < 1e-3
    out = CliRunner().invoke(store_cli, ["stats", str(teacher_store), "--reference-model", str(teacher_dir),
                                         "--kl-examples", "2", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    s = json.loads(out.output[out.output.index('{"store"'):])  # after transformers' loading bar, if any
    bound = src.attrs["encoding"]["max_abs_error"]  # qdelta: 1/52 / 2 nats
    assert s["kl_examples"] == 2 and s["logprob_max_abs_error"] == bound < 0.01 and s["kl_full_mean"] >= 0
