"""State files replaced whole: a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, tmp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``text`` in one rename.

    The temporary file has a unique name, so two writers (threads or processes) never write into
    each other's file or rename one away under the other: the last rename wins, whole. It lives in
    ``tmp_dir`` (default: beside ``path``; it must be on the same file system) — a folder some
    program watches, such as Traefik's, should not see it.
    """
    folder = tmp_dir or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    ) as out:
        tmp = Path(out.name)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # the rename must not land before the content (power loss)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
