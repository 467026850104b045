"""The store records the dtype the teacher actually ran in (engine.dtype), and the one asked for
(engine.requested_dtype): `--dtype auto` on a float32 checkpoint is 16-bit in vLLM."""
import json

import pytest
import zarr

from helpers import precompute_args, run_cli
from kdstream.errors import KdError


def attrs(out) -> dict:
    return dict(zarr.open_group(str(out), mode="r").attrs)


@pytest.mark.slow
def test_vllm_auto_on_a_float32_teacher_records_the_16_bit_dtype_it_ran(tmp_path, teacher_dir, corpus_file):
    assert json.loads((teacher_dir / "config.json").read_text())["dtype"] == "float32"
    out = tmp_path / "auto.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out, "--dtype", "auto", "--max-examples", "4"))
    engine = attrs(out)["engine"]
    # vLLM downcasts float32 checkpoints under auto (bfloat16 on this CPU, float16 or bfloat16 on GPUs);
    # the run finishing means the loaded engine's dtype matched what was recorded before it started.
    assert engine["dtype"] in ("bfloat16", "float16") and engine["requested_dtype"] == "auto"
    assert attrs(out)["options"]["engine"]["dtype"] == "auto"


def test_hf_auto_on_cpu_records_float32(tmp_path, teacher_dir, corpus_file):
    out = tmp_path / "hf.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out, "--backend", "hf", "--dtype", "auto",
                             "--max-examples", "4"))
    engine = attrs(out)["engine"]
    assert engine["dtype"] == "float32" and engine["requested_dtype"] == "auto"


def test_a_loaded_teacher_in_another_dtype_than_the_store_records_is_refused(tmp_path, teacher_dir, corpus_file):
    from kdstream.engines.vllm import EngineOptions
    from kdstream.precompute import PrecomputeOptions, run_precompute
    from kdstream.precompute.hf_backend import HfTeacher

    teacher = HfTeacher(str(teacher_dir), 8, "float32")
    assert teacher.dtype == "float32"  # read from the loaded model
    out = tmp_path / "s.zarr"
    opts = PrecomputeOptions(model=str(teacher_dir), dataset=str(corpus_file), out=str(out), top_k=8, seq_len=64,
                             max_examples=4, backend="hf", engine=EngineOptions(dtype="bfloat16"))
    with pytest.raises(KdError, match="the teacher runs in float32 but the store records engine.dtype bfloat16"):
        run_precompute(opts, teacher=teacher)
    assert not list((out / "chunk_done").glob("c/*"))  # nothing written under the wrong label
