"""Atomic file and folder writes: build next to the target, fsync, rename, fsync the folder.

Readers never see a half-written file, and a crash leaves either the old version or the new one (plus,
at worst, a hidden ``.<name>.<random>.tmp`` that the next successful write does not need). A new file
gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask), and a replaced
file keeps its mode, so datasets, runs and reports stay readable by colleagues on a shared cluster.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` only when the ``with`` block completes without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:  # O_EXCL + mode 0o666: the kernel applies the umask, as for a plain open()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))  # replacing: keep the old mode
            except FileNotFoundError:
                pass
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_png(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A new folder, filled inside the ``with`` block, that appears at ``path`` (absent or empty) whole or not
    at all. Its mode is what ``os.mkdir`` gives (0777 minus the umask)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        for child in tmp.rglob("*"):  # the files' data must be on disk before the folder is published
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)
