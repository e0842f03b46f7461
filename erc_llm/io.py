"""Crash-safe file writing shared by every stage of the toolkit.

Each helper writes into a temporary file next to the target, flushes and fsyncs it, then swaps it into place
with ``os.replace``. A reader therefore sees either the old file or the complete new one, never half of it,
and an interrupted write leaves no stray temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "file_lock", "replace_dir"]

_DEFAULT_FILE_MODE = 0o644


def _process_umask() -> int:
    """Return the process umask without changing it (falls back to 022 where /proc is unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _target_mode(path: Path) -> int:
    """Permissions the written file should get: the existing file's, else the umask-filtered default."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_process_umask() if os.name == "posix" else _DEFAULT_FILE_MODE


def _fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory`` where the platform allows opening directories."""
    try:
        directory_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory_fd)
    except OSError:
        pass
    finally:
        os.close(directory_fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str = "utf-8", newline: str | None = "\n"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` that replaces ``path`` only if the ``with`` block succeeds.

    ``mode`` is ``"w"`` (text, with ``encoding`` and ``newline`` as for ``open``; pass ``newline=""`` for the
    csv module) or ``"wb"`` (binary). Parent directories are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    file_mode = _target_mode(target)
    temp_fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp_path = Path(temp_name)
    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(temp_fd, "wb")
        else:
            handle = os.fdopen(temp_fd, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, file_mode)
        os.replace(temp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
    _fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text``; return the path written."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``; return the path written."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2,
                      inline_scalar_lists: bool = False) -> Path:
    """Atomically write ``obj`` as UTF-8 JSON (non-ASCII kept readable, trailing newline); return the path.
    With ``inline_scalar_lists`` (and an indent), a list of scalars is written on one line (long label lists stay
    a line each instead of a line per item).

    Serialisation happens before the file is touched, so an unserialisable object leaves ``path`` unchanged.
    """
    if inline_scalar_lists and indent:
        text = _json_inline_lists(obj, indent, 0) + "\n"
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def _json_inline_lists(obj: Any, indent: int, depth: int) -> str:
    """JSON text indented like ``json.dumps(indent=...)``, but with every list of scalars on one line."""
    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    pad, inner = " " * (indent * depth), " " * (indent * (depth + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{dump(str(k))}: {_json_inline_lists(v, indent, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list | tuple) and obj and any(isinstance(v, dict | list | tuple) for v in obj):
        items = [f"{inner}{_json_inline_lists(v, indent, depth + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return dump(obj)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive inter-process lock on `path` held while the block runs (blocks until free)."""
    import fcntl

    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def replace_dir(finished: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Swap a fully written temporary folder into place; an existing target is moved aside, then removed."""
    import shutil

    finished, target = Path(finished), Path(target)
    os.chmod(finished, 0o755)  # mkdtemp creates 0700
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
        os.replace(finished, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(finished, target)
