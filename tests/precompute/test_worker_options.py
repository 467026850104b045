"""precompute-logits worker and device flags are checked before any work starts (no engine, no store)."""
import pytest

from kdstream.errors import KdError
from kdstream.precompute import PrecomputeOptions


def opts(**kw):
    return PrecomputeOptions(model="m", dataset="demo", out="s.zarr", **kw)


def test_worker_flags_are_validated():
    assert opts(num_workers=3, worker_index=2).worker_index == 2
    with pytest.raises(KdError, match=r"--worker-index 2 is outside 0\.\.1"):
        opts(num_workers=2, worker_index=2)
    with pytest.raises(KdError, match="--overwrite with --num-workers > 1"):  # each would wipe the others
        opts(num_workers=2, worker_index=0, overwrite=True)
    with pytest.raises(KdError, match="--chunk-rows 0 must be at least 1"):
        opts(chunk_rows=0)


def test_device_is_a_flag_of_the_hf_backend():
    assert opts(backend="hf", device="cpu").device == "cpu"
    with pytest.raises(KdError, match="--device cuda is for --backend hf"):
        opts(device="cuda")  # vLLM places the model itself
    with pytest.raises(KdError, match=r"--device 'tpu' is unknown: use auto \| cpu \| cuda"):
        opts(backend="hf", device="tpu")
