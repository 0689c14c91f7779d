"""Small files kept in the data dir, written so a crash never leaves half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write beside ``path`` then rename over it: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def kept(path: Path, read: Callable[[str], str], make: Callable[[], str], render: Callable[[str], str] = str,
         *, mode: int = 0o644) -> str:
    """A value made once and kept in ``path`` (a node id, a dev key): read it back, or make
    and store it.  ``read`` raises KeyError/ValueError for a file it cannot use."""
    try:
        return read(path.read_text())
    except (FileNotFoundError, KeyError, ValueError):
        pass
    value = make()
    write_atomic(path, render(value), mode=mode)
    return value
