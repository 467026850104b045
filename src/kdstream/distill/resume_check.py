"""What ``--resume`` compares: the options a checkpoint records against this run's."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kdstream.errors import KdError
from kdstream.options import options_dict

if TYPE_CHECKING:
    from kdstream.distill.options import DistillOptions
    from kdstream.distill.run_state import RunRecord

# Options --resume lets differ from the checkpoint's: they change how the run reads, logs or is
# placed, not the numbers it computes. (--logits-store is compared by the store's identity, or the
# digest of its content for a store without one (storage/content.py), instead of its path when the
# checkpoint records one; --fsdp and --device may change because checkpoints
# hold full state dicts, and the precision is compared resolved.)
RESUME_MAY_DIFFER = frozenset({"out", "resume", "overwrite", "loader_workers", "prefetch", "tensorboard",
                               "verify_store", "checkpoint_every", "fsdp", "device"})


def run_record_of(opts: DistillOptions, bf16: bool, store_identity: str | None) -> RunRecord:
    """The options as a checkpoint records them (JSON types; the precision resolved)."""
    from kdstream.distill.run_state import RunRecord

    options = json.loads(json.dumps(options_dict(opts)))
    options["precision"] = "bf16" if bf16 else "fp32"
    return RunRecord(options=options, store_identity=store_identity)


def _short(key: str) -> str:
    """"identity 1a2b3c4d5e6f", or "content digest 1a2b…" for a store without an identity."""
    from kdstream.storage.content import PREFIX

    return f"content digest {key[len(PREFIX):][:12]}" if key.startswith(PREFIX) else f"identity {key[:12]}"


def _flag(name: str, value) -> str:
    flag = "--" + name.replace("_", "-")
    return f"no {flag}" if value is None or value is False else flag if value is True else f"{flag} {value}"


def check_resume(earlier: RunRecord, now: RunRecord) -> None:
    """Refuse to continue a checkpoint under options that change the result (see RESUME_MAY_DIFFER):
    another store, batch size, lr or loss would train rows twice, skip them or mix objectives."""
    fix = "rerun with the checkpoint's options or drop --resume (--overwrite starts over)"
    by_identity = earlier.store_identity is not None and now.store_identity is not None
    if by_identity and earlier.store_identity != now.store_identity:
        raise KdError(f"--resume: the checkpoint was made from another store ({_short(earlier.store_identity)}), "
                      f"--logits-store {now.options['logits_store']} is {_short(now.store_identity)}: {fix}")
    skip = RESUME_MAY_DIFFER | ({"logits_store"} if by_identity else set())
    for name, value in now.options.items():
        if name in skip or earlier.options.get(name) == value:
            continue
        raise KdError(f"--resume: the checkpoint was made with {_flag(name, earlier.options.get(name))}, "
                      f"this run has {_flag(name, value)}: {fix}")
