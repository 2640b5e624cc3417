"""safe_extract on real zip and tar archives, benign and malicious, built here."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.sources.archives import ArchiveError, UnsafeArchive, safe_extract


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def leftovers(folder: Path) -> list[str]:
    """Temp folders safe_extract might have left next to dest."""
    return [p.name for p in folder.iterdir() if ".extract-" in p.name]


def test_zip_extracts_nested_files_and_keeps_existing_ones(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"top/img/1.png": b"png", "top/train.jsonl": b"{}\n"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    files = safe_extract(archive, dest)
    assert files == sorted([dest / "top/img/1.png", dest / "top/train.jsonl"])
    assert (dest / "top/img/1.png").read_bytes() == b"png"
    assert (dest / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz", "a.tgz"])
def test_tar_variants_extract(tmp_path, name):
    archive = make_tar(tmp_path / name, [("d/x.txt", b"hello"), ("y.txt", b"")])
    files = safe_extract(archive, tmp_path / "dest")
    assert [f.relative_to(tmp_path / "dest").as_posix() for f in files] == ["d/x.txt", "y.txt"]
    assert (tmp_path / "dest/d/x.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("bad_name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil.txt",
                                      "..\\evil.txt", "C:/evil.txt"])
def test_zip_path_escapes_are_refused_and_nothing_is_written(tmp_path, bad_name):
    # The good member comes first: a refusal must not leave it half-extracted in dest.
    archive = make_zip(tmp_path / "bad.zip", {"good.txt": b"fine", bad_name: b"pwned"})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="evil.txt"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()
    assert leftovers(tmp_path) == []


def test_zip_symlink_member_is_refused(tmp_path):
    archive = make_zip(tmp_path / "link.zip", {"a.txt": b"x"}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(UnsafeArchive, match="'link' is a symlink"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "a.txt").exists()


@pytest.mark.parametrize("member, message", [
    (special("escape", tarfile.SYMTYPE, "../../etc/passwd"), "symlink"),
    (special("inside", tarfile.SYMTYPE, "a.txt"), "symlink"),
    (special("hard", tarfile.LNKTYPE, "/etc/passwd"), "hardlink"),
    (special("pipe", tarfile.FIFOTYPE), "device or fifo"),
    (special("tty", tarfile.CHRTYPE), "device or fifo"),
    (special("disk", tarfile.BLKTYPE), "device or fifo"),
])
def test_tar_links_and_devices_are_refused(tmp_path, member, message):
    archive = make_tar(tmp_path / "bad.tar.gz", [("a.txt", b"x"), member])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match=message) as caught:
        safe_extract(archive, dest)
    assert repr(member.name) in str(caught.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("bad_name", ["/abs/evil", "x/../../evil", "../evil"])
def test_tar_path_escapes_are_refused(tmp_path, bad_name):
    archive = make_tar(tmp_path / "bad.tar", [(bad_name, b"pwned")])
    with pytest.raises(UnsafeArchive, match="evil"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_size_cap_stops_a_zip_bomb(tmp_path):
    # 4 MB of zeros compresses to a few KB: the declared size is what gives it away.
    archive = make_zip(tmp_path / "bomb.zip", {"small.txt": b"x", "zeros.bin": bytes(4 << 20)})
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(UnsafeArchive, match="over the cap"):
        safe_extract(archive, tmp_path / "dest", max_total_bytes=1 << 20)
    assert list((tmp_path / "dest").iterdir()) == []
    # Under a cap it fits, everything lands.
    assert len(safe_extract(archive, tmp_path / "ok", max_total_bytes=8 << 20)) == 2


def test_not_an_archive_and_truncated_archive(tmp_path):
    plain = tmp_path / "notes.zip"
    plain.write_text("just text")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        safe_extract(plain, tmp_path / "dest")

    good = make_tar(tmp_path / "big.tar.gz", [(f"f{i}.bin", bytes(range(256)) * 400)
                                                for i in range(5)])
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    dest = tmp_path / "dest2"
    with pytest.raises(ArchiveError):
        safe_extract(truncated, dest)
    assert list(dest.iterdir()) == []
    assert leftovers(tmp_path) == []
