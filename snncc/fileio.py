"""The one way snncc writes a file: atomically, durably, with the permissions the user expects.

:func:`atomic_writer` opens a temporary file in the target's directory, hands it to the caller, and on success
flushes it, ``fsync`` s it and renames it over the target (``os.replace`` is atomic within one file system, which is
why the temporary file lives in the same directory, not in ``/tmp``). A reader therefore sees either the old file
or the complete new one, never a half-written one, even if the writer raises or the process is killed; on any
failure the temporary file is removed and the old file is left as it was.

The temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the kernel applies the process's
umask and the file ends up with mode ``0o666 & ~umask`` (``0644`` under the usual umask ``022``), like a file that
``open(path, "w")`` creates. ``tempfile.mkstemp`` would give ``0600``, which hides reports and ``.snn`` files from the
user's group and from a web server that serves them. Reading the umask needs no ``os.umask`` round trip (which is
not thread safe): the kernel applies it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: Mode requested for every file snncc creates; the umask is subtracted by the kernel.
FILE_MODE = 0o666


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file next to ``path`` (``.NAME.RANDOM.tmp``), opened for writing."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE), tmp
        except FileExistsError:  # a name left by another writer; draw again
            continue


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory, and that is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path, text: bool = False) -> Iterator[IO]:
    """Write ``path`` atomically: ``with atomic_writer(path) as fh: fh.write(...)``.

    ``fh`` is a binary file object (``text=True``: a UTF-8 text file object). The parent directory is created if
    needed. The new file replaces ``path`` only when the ``with`` block completes; if it raises, ``path`` keeps its
    old content (or stays absent) and no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, text=True) as fh:
        fh.write(text)
    return Path(path)


def write_json(data: object, path: str | Path, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically; nothing is written if it cannot be
    encoded."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")
