"""Progress bars: one place that decides how long work is shown (rate and ETA on stderr)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, unit: str = "it", **kwargs):
    """A tqdm bar on stderr with rate and ETA; ``unit="tok"`` shows tokens/s."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "tok",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        **kwargs,
    )
