"""distill from a store it cannot write to: served over plain HTTP by a local server, and on a
read-only filesystem (a read-only bind mount in a private mount namespace). Both runs must give
the losses and weights of the same run from the local store."""
import shutil
import subprocess
import sys

import pytest

from helpers import losses, run_cli, weight_gap

ARGS = ("--epochs", 1, "--batch-size", 8, "--lr", "1e-3", "--loader-workers", 1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, teacher_store, student_init_dir):
    out = tmp_path_factory.mktemp("local") / "out"
    run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, *ARGS, "--out", out)
    return out


def test_distill_from_a_store_served_over_http(http_root, teacher_store, student_init_dir, local_run, tmp_path):
    root, base = http_root
    shutil.copytree(teacher_store, root / "teacher.zarr")
    out = tmp_path / "out"
    run_cli("distill", "--logits-store", f"{base}/teacher.zarr", "--model", student_init_dir, *ARGS, "--out", out)
    assert losses(out) == losses(local_run) and weight_gap(out, local_run) == 0


def read_only_mount(source, target) -> list[str]:
    """A command prefix that runs a command with ``source`` mounted read-only at ``target``, in a
    private mount namespace (nothing outside it changes); [] where this machine does not allow it."""
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    for unshare in (["unshare", "--mount", "--propagation", "private"],
                    ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*unshare, "sh", "-c", script, "mount", str(source), str(target), "sh", "-c",
                                f'! touch "{target}/probe" 2>/dev/null'], capture_output=True)
        if probe.returncode == 0:
            return [*unshare, "sh", "-c", script, "mount", str(source), str(target)]
    return []


def test_distill_from_a_store_on_a_read_only_filesystem(teacher_store, student_init_dir, local_run, tmp_path):
    source, target = tmp_path / "store", tmp_path / "ro"
    shutil.copytree(teacher_store, source / "teacher.zarr")
    target.mkdir()
    prefix = read_only_mount(source, target)
    if not prefix:
        pytest.skip("this machine allows no read-only bind mount (unshare --mount, with or without a user namespace)")
    out = tmp_path / "out"
    proc = subprocess.run([*prefix, sys.executable, "-m", "kdstream", "distill", "--logits-store",
                           str(target / "teacher.zarr"), "--model", str(student_init_dir),
                           *map(str, ARGS), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert losses(out) == losses(local_run) and weight_gap(out, local_run) == 0
