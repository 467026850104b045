"""Resumable training state: model, optimizer, scheduler, RNG, loader position and the options.

A checkpoint is a directory ``step-N`` written under a temporary name and renamed, so a kill
mid-write leaves the previous checkpoint intact; only the latest is kept. It holds:

- the model via ``save_pretrained`` (safetensors), so any intermediate checkpoint is usable alone;
- ``state.safetensors``: every tensor of the optimizer state and the torch RNG state;
- ``state.json``: everything else (position, scheduler, numpy and python RNG states, the
  optimizer's parameter groups, the resolved options and the store's identity);
- ``digests.json``, written last: the sha256 of every other file.

On resume every file is checked against its digest (a flipped byte, a file added or removed is
refused), the position against the run's plan, and the schedule and optimizer settings against
the options, so a checkpoint edited by hand is refused rather than obeyed.

Nothing is pickled, so loading a checkpoint someone else wrote runs no code of theirs. A
``state.pt`` (the pickle earlier versions wrote) is refused, never opened.

Under FSDP the weights and optimizer state are sharded: ``gather_state`` (a collective, every
rank calls it) assembles full tensors on the CPU, rank 0 writes them, and ``load_checkpoint``
hands every rank the full state to re-shard. The files are the same with and without FSDP (the
optimizer state keyed by parameter name either way), so a run can resume under the other.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kdstream.distill.run_state import Position, RunRecord
from kdstream.errors import KdError, shown

if TYPE_CHECKING:
    from kdstream.distill.run_state import Run

CHECKPOINTS = "checkpoints"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
DIGESTS = "digests.json"  # {"sha256": {file name: digest}} of every other file of the checkpoint
FORMAT = 3  # state.json's "format": a checkpoint of any other is refused (docs/distill.md)
_FIX = "drop --resume and pass --overwrite to start over"
_SEP = "/"  # joins optimizer-state key parts; parameter names hold dots, never slashes


def gather_state(net, optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) with full, unsharded CPU tensors; the optimizer's
    keyed by parameter name (torch.distributed.checkpoint's form) with or without FSDP, so a
    checkpoint of either kind resumes under the other."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if not fsdp:
        _, optim = get_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True))
        return net.state_dict(), optim
    return get_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_model(net, model_state: dict, directory: Path) -> None:
    """``save_pretrained`` with explicit (possibly gathered) weights."""
    net.save_pretrained(str(directory), state_dict=model_state)


def _split_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by "optimizer/PARAM/KEY", the JSON rest: parameter groups and non-tensor state)."""
    tensors, plain = {}, {}
    for name, entries in optim_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[_SEP.join(("optimizer", str(name), key))] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(name), {})[key] = value
    return tensors, {"param_groups": optim_state["param_groups"], "plain_state": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {name: dict(entries) for name, entries in meta["plain_state"].items()}
    for flat, value in tensors.items():
        if flat.startswith("optimizer" + _SEP):
            _, name, key = flat.split(_SEP)
            state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_json() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def _set_rng(rng: dict, torch_state: torch.Tensor) -> None:
    torch.set_rng_state(torch_state)
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(run: Run, model_state: dict, optim_state: dict) -> Path:
    """Rank 0 only: write ``step-N`` (N = ``run.pos.step``) under ``run.partial`` from the states
    ``gather_state`` returned, with the scheduler, RNG, position and ``run.record``."""
    from safetensors.torch import save_file

    pos, record = run.pos, run.record
    root = run.partial / CHECKPOINTS
    final = root / f"step-{pos.step:08d}"
    tmp = root / f".tmp-step-{pos.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(run.net, model_state, tmp)
    tensors, optim_meta = _split_optimizer(optim_state)
    save_file({**tensors, "rng/torch": torch.get_rng_state()}, str(tmp / STATE_TENSORS))
    state = {"format": FORMAT, "position": vars(pos).copy(), "optimizer": optim_meta,
             "scheduler": run.scheduler.state_dict(), "rng": _rng_json(),
             "options": record.options, "store_identity": record.store_identity}
    (tmp / STATE_JSON).write_text(json.dumps(state))
    _write_digests(tmp)
    tmp.rename(final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def _write_digests(directory: Path) -> None:
    from kdstream.model_files import file_sha256

    digests = {p.name: file_sha256(p) for p in sorted(directory.iterdir())}
    (directory / DIGESTS).write_text(json.dumps({"sha256": digests}))


def check_digests(path: Path) -> None:
    """KdError naming the first file of checkpoint ``path`` that is missing, not listed in
    ``digests.json`` or differs from its digest there."""
    from kdstream.model_files import file_sha256

    try:
        recorded = json.loads((path / DIGESTS).read_text())["sha256"]
        ok = isinstance(recorded, dict) and all(isinstance(d, str) and Path(n).name == n not in ("", ".", "..", DIGESTS)
                                                for n, d in recorded.items())
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise KdError(f"checkpoint {path} has no readable {DIGESTS} (written by an older kdstream, or damaged): {_FIX}")
    for extra in sorted({p.name for p in path.iterdir()} - set(recorded) - {DIGESTS}):
        raise KdError(f"checkpoint {path} holds {shown(extra, 80)}, which kdstream did not write: remove it, or {_FIX}")
    for name, digest in sorted(recorded.items()):
        if not (path / name).is_file():
            raise KdError(f"checkpoint {path} is missing {name}: {_FIX}")
        if file_sha256(path / name) != digest:
            raise KdError(f"checkpoint {path}/{name} is damaged: its sha256 differs from the one in {DIGESTS}: {_FIX}")


def read_state(path: Path) -> dict:
    """``state.json`` of checkpoint ``path``, every file checked against its digest and the state
    for form; refuses (never opens) a pickle."""
    if not (path / STATE_JSON).is_file():
        what = "a pickled state.pt, which kdstream no longer loads" if (path / "state.pt").exists() else "no state.json"
        raise KdError(f"checkpoint {path} was written by an older kdstream or not by kdstream ({what}): {_FIX}")
    check_digests(path)
    try:
        state = json.loads((path / STATE_JSON).read_text())
        ok = state["format"] == FORMAT and isinstance(state["options"], dict) and Position(**state["position"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise KdError(f"checkpoint {path}/{STATE_JSON} is damaged or not kdstream's (format {FORMAT}): {_FIX}")
    return state


def check_position(path: Path, state: dict, steps_per_epoch: int, epochs: int) -> None:
    """The checkpoint's position must be a step this run's plan reaches: ``epochs`` epochs of
    ``steps_per_epoch`` optimizer steps, a checkpoint strictly before the end, named for its step."""
    pos = state["position"]
    step, epoch, batch = pos["step"], pos["epoch"], pos["batch_in_epoch"]
    ints = all(type(v) is int for v in (step, epoch, batch))
    if not (ints and 0 <= epoch < epochs and 0 <= batch <= steps_per_epoch and step == epoch * steps_per_epoch + batch
            and 0 < step < epochs * steps_per_epoch and path.name == f"step-{step:08d}"):
        raise KdError(f"checkpoint {path}: its position (step {shown(step, 24)}, epoch {shown(epoch, 24)}, batch "
                      f"{shown(batch, 24)}) is not a point of this run ({epochs} epochs of {steps_per_epoch} steps): "
                      f"{_FIX}")


def check_schedule(path: Path, state: dict, optimizer, scheduler) -> None:
    """The checkpoint's schedule and optimizer settings must be those this run's options give at
    its step (``optimizer`` and ``scheduler`` fresh, at step 0): a hand-edited ``base_lrs`` or
    weight decay would otherwise be obeyed while options.yaml records the options."""
    step = state["position"]["step"]
    fresh = json.loads(json.dumps(scheduler.state_dict()))  # the JSON types the checkpoint holds
    lrs = [base * f(step) for base, f in zip(fresh["base_lrs"], scheduler.lr_lambdas)]
    want = {**fresh, "last_epoch": fresh["last_epoch"] + step, "_step_count": fresh["_step_count"] + step,
            "_last_lr": lrs}
    have = state["scheduler"] if isinstance(state["scheduler"], dict) else {}
    for key in sorted(want):
        _same_or_refuse(path, f"scheduler {key}", have.get(key), want[key])
    groups = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
    saved = state["optimizer"]["param_groups"] if isinstance(state["optimizer"], dict) else None
    if not isinstance(saved, list) or len(saved) != len(groups) or not all(isinstance(g, dict) for g in saved):
        raise KdError(f"checkpoint {path}/{STATE_JSON}: its optimizer groups are not this run's: {_FIX}")
    for group, fresh_group, lr in zip(saved, groups, lrs):
        for key in sorted(set(fresh_group) - {"params"}):  # a key this torch has and the saving one had not: ignored
            if key in group or key in ("lr", "initial_lr", "weight_decay", "betas", "eps"):
                _same_or_refuse(path, f"optimizer {key}", group.get(key), lr if key == "lr" else fresh_group[key])


def _same_or_refuse(path: Path, what: str, have, want) -> None:
    if not _same(have, want):
        raise KdError(f"checkpoint {path}: its {what} is {shown(have, 40)}, this run's options make it "
                      f"{shown(want, 40)} (the checkpoint was edited or is not this run's): {_FIX}")


def _same(a, b) -> bool:
    """Equal as JSON values, floats to 1e-9 relative (a value recomputed, not copied)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return type(a) is type(b) and a == b


def run_record(state: dict) -> RunRecord:
    return RunRecord(options=state["options"], store_identity=state.get("store_identity"))


def load_checkpoint(path: Path, state: dict, net, optimizer, scheduler) -> Position:
    """Restore ``read_state(path)``'s checkpoint in place (every rank) into a fresh optimizer and
    scheduler, after checking its schedule against theirs; returns where training stopped."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from kdstream.engines.hf import load_causal_lm

    check_schedule(path, state, optimizer, scheduler)
    try:
        tensors = load_file(str(path / STATE_TENSORS))
        # from_pretrained maps the saved names back to this transformers version's module names;
        # use_safetensors: a pickled weights file (*.bin) there is never loaded
        weights = load_causal_lm(path, "float32", "cpu", cls=type(net), safetensors_only=True).state_dict()
        optim = _join_optimizer(tensors, state["optimizer"])
        # FSDP re-shards the full tensors; without FSDP this is a plain load by parameter name
        set_state_dict(net, optimizer, model_state_dict=weights, optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"], tensors["rng/torch"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdError(f"checkpoint {path} is damaged or incomplete ({first[:200]}): {_FIX}") from None
    return Position(**state["position"])
