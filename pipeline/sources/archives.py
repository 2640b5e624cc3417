"""Extract downloaded .zip / .tar / .tar.gz archives without trusting their member names.

Archives come from the internet (Google Drive, dataset mirrors). A member named `../../x`, an
absolute path, a symlink or a device node could write outside the landing folder, and a tiny
archive can expand to terabytes. Every member is checked before anything is written, everything
is unpacked into a temporary sibling folder, and only a complete, accepted extraction is moved
into place: a refused or corrupt archive leaves `dest` as it was.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

_COPY_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The file is not an archive we can read, or it is corrupt."""


class UnsafeArchive(ArchiveError):
    """A member would escape the destination, is not a plain file or folder, or the archive
    expands past the size cap. The message names the member."""


@dataclass(frozen=True)
class _Member:
    name: str          # the name as stored in the archive
    relative: PurePosixPath  # the checked path it will take under dest
    is_dir: bool
    size: int          # declared uncompressed size (zip headers can lie; streaming re-checks)
    handle: object     # ZipInfo or TarInfo, to open the data


def safe_extract(archive: Path, dest: Path, max_total_bytes: int | None = None) -> list[Path]:
    """Extract `archive` into `dest` (created if needed); return the extracted files, sorted.

    Raises `UnsafeArchive` naming the first offending member, or `ArchiveError` when the file is
    no zip or tar or is corrupt. Existing files in `dest` with the same relative path are
    replaced; other files in `dest` are left alone.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # The temp folder sits next to dest so the final moves are renames on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        relative_files = _extract_all(archive, staging, max_total_bytes)
        extracted = []
        for relative in relative_files:
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, target)
            extracted.append(target)
        return sorted(extracted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_all(archive: Path, staging: Path, max_total_bytes: int | None) -> list[PurePosixPath]:
    if zipfile.is_zipfile(archive):
        opener, reader = _open_zip, _zip_members
    elif tarfile.is_tarfile(archive):
        opener, reader = _open_tar, _tar_members
    else:
        raise ArchiveError(f"{archive}: not a zip or tar archive")
    try:
        with opener(archive) as handle:
            members = list(reader(handle))
            _check_total_size(archive, members, max_total_bytes)
            return _write_members(archive, handle, members, staging, max_total_bytes)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(f"{archive}: cannot extract, corrupt or unreadable ({exc})") from exc
    except RuntimeError as exc:  # zipfile raises it for encrypted members
        raise ArchiveError(f"{archive}: cannot read ({exc})") from exc


def _open_zip(path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def _open_tar(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, mode="r:*")


def checked_relative_path(name: str) -> PurePosixPath:
    """The member name as a relative path that stays inside the destination, or UnsafeArchive."""
    # Backslashes are separators on Windows-made zips; treat them as such so `..\\x` is caught.
    cleaned = name.replace("\\", "/")
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    parts = [part for part in PurePosixPath(cleaned).parts if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} escapes the destination with '..'")
    if not parts:
        raise UnsafeArchive(f"member {name!r} has an empty path")
    return PurePosixPath(*parts)


def _zip_members(handle: zipfile.ZipFile) -> Iterator[_Member]:
    for info in handle.infolist():
        relative = checked_relative_path(info.filename)
        # Zips made on unix keep the file type in the high bits; others leave them 0.
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UnsafeArchive(f"member {info.filename!r} is a symlink")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(f"member {info.filename!r} is a device or fifo (type {kind:o})")
        yield _Member(info.filename, relative, info.is_dir(), info.file_size, info)


def _tar_members(handle: tarfile.TarFile) -> Iterator[_Member]:
    for info in handle.getmembers():
        relative = checked_relative_path(info.name)
        if info.issym():
            raise UnsafeArchive(f"member {info.name!r} is a symlink to {info.linkname!r}")
        if info.islnk():
            raise UnsafeArchive(f"member {info.name!r} is a hardlink to {info.linkname!r}")
        if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
            raise UnsafeArchive(f"member {info.name!r} is a device or fifo")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchive(f"member {info.name!r} is not a regular file or folder")
        yield _Member(info.name, relative, info.isdir(), info.size, info)


def _check_total_size(archive: Path, members: list[_Member], cap: int | None) -> None:
    if cap is None:
        return
    total = sum(member.size for member in members if not member.is_dir)
    if total > cap:
        largest = max(members, key=lambda member: member.size)
        raise UnsafeArchive(f"{archive}: expands to {total} bytes, over the cap of {cap} "
                            f"(largest member {largest.name!r})")


def _open_member(handle: zipfile.ZipFile | tarfile.TarFile, member: _Member) -> IO[bytes]:
    if isinstance(handle, zipfile.ZipFile):
        return handle.open(member.handle)
    stream = handle.extractfile(member.handle)
    if stream is None:  # cannot happen for a regular file; guards a malformed header
        raise ArchiveError(f"member {member.name!r} has no data")
    return stream


def _write_members(archive: Path, handle, members: list[_Member], staging: Path,
                   cap: int | None) -> list[PurePosixPath]:
    written: dict[PurePosixPath, None] = {}  # ordered set: a repeated name keeps its last copy
    total = 0
    for member in members:
        target = staging / member.relative
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # Count bytes as they stream: a zip header's declared size is not to be trusted.
        limit = member.size if cap is None else min(member.size, cap - total)
        with _open_member(handle, member) as source, target.open("wb") as out:
            copied = _copy_limited(source, out, limit)
        if copied > member.size:
            raise UnsafeArchive(f"member {member.name!r} holds more bytes than it declares")
        total += copied
        if cap is not None and total > cap:
            raise UnsafeArchive(f"{archive}: member {member.name!r} takes the total past the "
                                f"cap of {cap} bytes")
        written[member.relative] = None
    return list(written)


def _copy_limited(source: IO[bytes], out: IO[bytes], limit: int) -> int:
    """Copy at most limit + 1 bytes, so a caller can tell that the member overran its limit."""
    copied = 0
    while True:
        chunk = source.read(min(_COPY_CHUNK, limit + 1 - copied))
        if not chunk:
            return copied
        out.write(chunk)
        copied += len(chunk)
        if copied > limit:
            return copied
