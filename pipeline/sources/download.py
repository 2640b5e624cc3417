"""What every real-data `fetch` shares: land into a staging folder then swap it into place, copy
a local folder (confined to it), download a URL, unpack archives safely, record what landed.

A fetch that fails half-way leaves the previous `data/<source>/` untouched, so `dvc add data`
never records a partial download.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from pipeline import atomic
from pipeline.errors import StageFailed
from pipeline.paths import Paths
from pipeline.sources.archives import safe_extract

_CHUNK = 1 << 20
log = logging.getLogger(__name__)


class FetchError(StageFailed):
    """A source could not be fetched: nothing configured, a missing folder, a failed download."""


@contextmanager
def landing(dest: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `dest`; on success it replaces `dest` whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        yield staging
        _replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary folder on the same filesystem as `near` (downloads can be many GB)."""
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{near.name}.download-", dir=near.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _replace_dir(new: Path, dest: Path) -> None:
    if dest.exists():
        retired = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, retired)
        os.rename(new, dest)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(new, dest)


def local_folder(configured: str | None, key: str) -> Path:
    """The configured local folder, or FetchError naming the params key."""
    path = Path(str(configured)).expanduser()
    if not path.is_dir():
        raise FetchError(f"{key}: {path} is not a folder")
    return path


# Why an entry of a local folder was not copied. The first two match ingest's quarantine
# reasons for the same defects, so a skipped file reads the same at fetch and at ingest.
OUTSIDE = "path_outside_dataset"     # a symlink (or a folder symlink) leading out of the folder
NOT_REGULAR = "not_a_regular_file"   # a FIFO, socket, device, folder symlink, or a link to one
BROKEN_LINK = "broken_symlink"       # a symlink to nothing
HIDDEN = "hidden"                    # tool state such as `.cache/` or `.DS_Store`, by design
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class CopyReport:
    """What one fetch landed: files copied, and every entry skipped, named with its reason."""
    copied: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, relative: PurePath, reason: str, detail: str) -> None:
        self.skipped.append({"path": relative.as_posix(), "reason": reason, "detail": detail})

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(entry["reason"] for entry in self.skipped))


def copy_tree(source: Path, dest: Path, report: CopyReport | None = None) -> CopyReport:
    """Copy the regular files under `source` into `dest` (merging), confined to `source`.

    A symlink is followed only to a regular file inside `source` (and copied as that file);
    symlinks leading out, folder symlinks, FIFOs, sockets and devices are never opened for
    reading and are recorded in the report instead, so nothing outside the folder is read, a
    FIFO cannot hang the fetch and `/dev/zero` cannot fill the disk.
    """
    source, report = Path(source), report if report is not None else CopyReport()
    home = os.path.realpath(source)
    # os.walk never descends into folder symlinks; a folder it cannot list stops the fetch.
    for folder, subfolders, files in os.walk(source, onerror=_unlistable):
        here = Path(folder)
        kept = []
        for name in sorted(subfolders):
            relative = (here / name).relative_to(source)
            if name.startswith("."):
                report.skip(relative, HIDDEN, "hidden folder, not data")
            elif (here / name).is_symlink():
                _skip_link(here / name, relative, home, report, "a symlink to a folder")
            else:
                kept.append(name)
        subfolders[:] = kept  # os.walk descends only into what is left here
        for name in sorted(files):
            relative = (here / name).relative_to(source)
            if name.startswith("."):
                report.skip(relative, HIDDEN, "hidden file, not data")
            else:
                copy_file(here / name, relative, home, dest / relative, report)
    return report


def copy_file(path: Path, relative: PurePath, home: str, target: Path,
              report: CopyReport) -> bool:
    """Copy `path` to `target` when it is, or links to, a regular file inside the folder `home`
    (a realpath); otherwise record why in `report`. True when copied."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        report.skip(relative, BROKEN_LINK, "vanished while fetching")
        return False
    if stat.S_ISLNK(mode):
        if not _link_to_regular_inside(path, relative, home, report):
            return False
        path = Path(os.path.realpath(path))
    elif not stat.S_ISREG(mode):
        report.skip(relative, NOT_REGULAR, f"{_kind(mode)}, never opened")
        return False
    try:  # non-blocking, no last-moment symlink: the checks above cannot be raced into a hang
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise FetchError(f"{relative.as_posix()} cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            report.skip(relative, NOT_REGULAR, f"{_kind(info.st_mode)} (replaced while fetching)")
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            shutil.copyfileobj(handle, out, _CHUNK)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # as shutil.copy2 did
    report.copied += 1
    return True


def _link_to_regular_inside(path: Path, relative: PurePath, home: str,
                            report: CopyReport) -> bool:
    resolved = os.path.realpath(path)
    if not _inside(resolved, home):
        report.skip(relative, OUTSIDE, "a symlink leading out of the folder")
        return False
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        report.skip(relative, BROKEN_LINK, "a symlink to nothing")
        return False
    if not stat.S_ISREG(mode):
        report.skip(relative, NOT_REGULAR, f"a symlink to {_kind(mode)}")
        return False
    return True


def _skip_link(path: Path, relative: PurePath, home: str, report: CopyReport,
               what: str) -> None:
    if _inside(os.path.realpath(path), home):
        report.skip(relative, NOT_REGULAR, f"{what} inside the folder, not followed")
    else:
        report.skip(relative, OUTSIDE, f"{what} leading out of the folder")


def _unlistable(exc: OSError) -> None:
    raise FetchError(f"{exc.filename} cannot be listed: {exc.strerror}") from exc


def _inside(path: str, home: str) -> bool:
    return path == home or path.startswith(home.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def fetch_stats_path(dest: Path) -> Path:
    """Where fetch's record lives: `artifacts/fetch/stats.json` of the project whose
    `data/<source>/` is `dest` (Paths.source_dir), outside the DVC-tracked data."""
    return Paths(Path(dest).parent.parent).stats("fetch")


def record_fetch(dest: Path, source: str, report: CopyReport) -> dict:
    """Write this source's entry of the fetch record (other sources' entries are kept) and
    warn about every skipped entry; return the entry."""
    entry = {"files_copied": report.copied, "skipped": len(report.skipped),
             "skipped_by_reason": report.by_reason(), "skipped_entries": report.skipped}
    path = fetch_stats_path(dest)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[source] = entry
    atomic.write_json(path, record)
    if report.skipped:
        log.warning("%s: %d entries not copied %s, e.g. %s (all named in %s)", source,
                    len(report.skipped), entry["skipped_by_reason"],
                    report.skipped[0]["path"], path)
    return entry


def download_url(url: str, folder: Path, timeout: float = 60.0) -> Path:
    """Stream `url` (http, https or file) into `folder` under its own file name."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = Path(folder) / name
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        partial.unlink(missing_ok=True)
        raise FetchError(f"download of {url} failed: {exc}") from exc
    os.replace(partial, target)
    return target


def download_and_extract(urls: Sequence[str], dest: Path,
                         max_total_bytes: int | None) -> CopyReport:
    """Download each archive URL and extract it into `dest`. safe_extract refuses an archive
    holding links, devices or FIFOs whole, so the report only counts files."""
    report = CopyReport()
    with scratch_dir(dest) as scratch:
        for url in urls:
            archive = download_url(url, scratch)
            report.copied += len(safe_extract(archive, dest, max_total_bytes))
            archive.unlink()  # archives can be tens of GB; do not hold two at once
    return report


def copy_or_download(local_dir: str | None, key: str, urls: Sequence[str], dest: Path,
                     max_total_bytes: int | None) -> CopyReport:
    """The configured local folder (params key `key`), copied confined to itself; else the
    archives at `urls`, downloaded and extracted."""
    if local_dir:
        return copy_tree(local_folder(local_dir, key), dest)
    return download_and_extract(urls, dest, max_total_bytes)


def hoist_single_folder(dest: Path) -> None:
    """Archives often wrap everything in one top folder (`MMHS150K/…`); lift its contents up so
    readers find the files at the source root."""
    entries = list(Path(dest).iterdir())
    if len(entries) != 1 or not entries[0].is_dir():
        return
    wrapper = entries[0]
    lifted = wrapper.with_name(f".{wrapper.name}.hoist")
    os.rename(wrapper, lifted)  # frees the name in case a child carries the same one
    for child in lifted.iterdir():
        os.rename(child, dest / child.name)
    lifted.rmdir()
