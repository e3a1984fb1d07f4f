"""Progress display for long loops (rich), silenced by ``--quiet`` or PLABEL_QUIET=1."""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("PLABEL_QUIET", "") not in ("", "0")


def track(items: Iterable[T], description: str, *, total: int | None = None,
          enabled: bool = True) -> Iterable[T]:
    """Iterate with a rich progress bar on stderr when enabled and not quiet."""
    if not enabled or quiet():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total,
                          console=Console(stderr=True), transient=False)
