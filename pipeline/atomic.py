"""Crash-safe outputs: write beside the destination, then rename into place.

A rename within one filesystem is atomic, so a reader (the next stage, DVC, `register`) sees the
old file or the new one, never half of one. A killed stage leaves at most a hidden `.<name>.tmp-…`
beside its outputs, which `.dvcignore` covers and the next write replaces.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"  # every temporary name holds this (see .dvcignore)


def _temp_name(dest: Path) -> str:
    # The pid keeps parallel workers writing the same destination apart.
    return f".{dest.name}{TMP_MARK}{os.getpid()}"


@contextmanager
def temp_path(dest: str | Path) -> Iterator[Path]:
    """A path to write `dest`'s new content to; renamed onto `dest` when the block succeeds,
    removed when it fails. For writers that want a file name (pyarrow, pandas, safetensors)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(_temp_name(dest))
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(dest: str | Path, data: bytes) -> None:
    with temp_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | Path, value: Any, indent: int = 2) -> None:
    write_text(dest, json.dumps(value, indent=indent) + "\n")


def write_with(dest: str | Path, writer: Callable[[Path], object]) -> None:
    """`writer(path)` writes the file; it lands on `dest` only when it returned normally."""
    with temp_path(dest) as tmp:
        writer(tmp)


@contextmanager
def directory(dest: str | Path) -> Iterator[Path]:
    """An empty folder to fill; when the block succeeds it replaces `dest` whole (the old one, if
    any, is moved aside first and then removed), so `dest` is always complete or absent.
    Staging folders that a killed writer left beside `dest` are removed first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_folders(dest)
    staging = Path(tempfile.mkdtemp(prefix=f"{_temp_name(dest)}-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would outlive the rename
    try:
        yield staging
        if dest.exists():
            retired = dest.with_name(f"{_temp_name(dest)}-old")
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(dest, retired)
            os.rename(staging, dest)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_dead_writers_folders(dest: Path) -> None:
    """A temporary name holds its writer's pid; a folder whose writer is gone (a killed stage)
    would otherwise stay forever, since every staging folder has a new name."""
    prefix = f".{dest.name}{TMP_MARK}"
    for entry in dest.parent.glob(glob.escape(prefix) + "*"):
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and entry.is_dir() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
