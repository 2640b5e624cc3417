"""What every real-data `fetch` shares: land into a staging folder then swap it into place, copy
a local folder, download a URL, unpack archives safely.

A fetch that fails half-way leaves the previous `data/<source>/` untouched, so `dvc add data`
never records a partial download.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StageFailed
from pipeline.sources.archives import safe_extract

_CHUNK = 1 << 20


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


def copy_tree(source: Path, dest: Path) -> int:
    """Copy the files under `source` into `dest` (merging); return how many were copied."""
    source = Path(source)
    count = 0
    for path in sorted(Path(source).rglob("*")):
        relative = path.relative_to(source)
        # Hidden entries are tool state, not data: huggingface_hub keeps `.cache/` inside its
        # download folder, macOS leaves `.DS_Store`.
        if path.is_dir() or any(part.startswith(".") for part in relative.parts):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)  # follows symlinks: the landing zone holds real files
        count += 1
    return count


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


def download_and_extract(urls: Sequence[str], dest: Path, max_total_bytes: int | None) -> int:
    """Download each archive URL and extract it into `dest`; return the number of files."""
    count = 0
    with scratch_dir(dest) as scratch:
        for url in urls:
            archive = download_url(url, scratch)
            count += len(safe_extract(archive, dest, max_total_bytes))
            archive.unlink()  # archives can be tens of GB; do not hold two at once
    return count


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
