"""Safe image loading: reject what cannot or should not be decoded, normalise the rest to RGB,
and keep it in a content-addressed store.

Every rejection is an `ImageRejected` with a reason code for the quarantine. The order of checks
matters: the pixel count comes from the header and is checked before any pixel is decoded, so a
decompression bomb never allocates its pixels.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline import atomic, phash

# Truncated files must fail, not decode half grey; nothing in this project may flip this.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Formats that later stages read as they are, so an RGB file in one of these is stored untouched.
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ORIENTATION_TAG = 0x0112
_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    min_side: int
    max_bytes: int


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image   # RGB, fully decoded
    format: str          # detected from the content (JPEG, PNG, GIF, ...)
    converted: bool      # False when the original bytes already are an RGB JPEG/PNG


@dataclass(frozen=True)
class StoredImage:
    sha256: str              # of the original bytes
    relative_path: str       # of the stored file, relative to the project root, POSIX
    width: int
    height: int
    format: str
    extension_mismatch: bool  # the file name's extension named another format
    converted: bool
    phash: str               # hex, see pipeline/phash.py


@contextmanager
def _pixel_limit(max_pixels: int):
    """Pillow's own bomb check, aligned with ours, and its warning made an error.

    Pillow warns above MAX_IMAGE_PIXELS and only errors above twice that; a warning would let the
    image through. Process-global state, so it is restored afterwards.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _describe(exc: BaseException) -> str:
    """The error's message without object addresses, so quarantine details are the same on
    every run (DVC compares outputs byte for byte)."""
    if isinstance(exc, UnidentifiedImageError):
        return "no image format recognises the content"
    return _ADDRESS.sub("", str(exc)) or type(exc).__name__


def _bomb(detail: str) -> ImageRejected:
    return ImageRejected("decompression_bomb", detail)


def decode(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Header checks, a full decode, then conversion to RGB; ImageRejected on any failure."""
    if not data:
        raise ImageRejected("empty_image", "the image file has zero bytes")
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits.max_bytes)
    with _pixel_limit(limits.max_pixels):
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(_describe(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # incl. UnidentifiedImageError
            raise ImageRejected("corrupt_image",
                                f"not a readable image: {_describe(exc)}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise _bomb(f"header declares {width}x{height} = {width * height} pixels, "
                        f"over ingest.max_image_pixels = {limits.max_pixels}")
        if min(width, height) < limits.min_side:
            raise ImageRejected("image_too_small", f"{width}x{height} is under "
                                f"ingest.min_image_side = {limits.min_side}")
        try:
            image.load()  # the full decode: a truncated or garbled stream fails here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(_describe(exc)) from None
        # Pillow's decoders signal bad data with many exception types (zlib, struct, EOF, ...).
        except Exception as exc:  # noqa: BLE001
            raise ImageRejected("corrupt_image", f"decoding failed: {_describe(exc)}") from None
    # Camera JPEGs with extra frames report "MPO"; they are JPEGs for every purpose here.
    source_format = _FORMAT_ALIASES.get(image.format, image.format) or "unknown"
    try:
        rgb = to_rgb(image)
    except (OSError, ValueError) as exc:
        raise ImageRejected("corrupt_image", f"cannot convert mode {image.mode} to RGB: "
                            f"{_describe(exc)}") from None
    converted = rgb is not image or source_format not in _KEPT_FORMATS
    return DecodedImage(rgb, source_format, converted)


def _has_rotation(image: Image.Image) -> bool:
    try:
        return image.getexif().get(_ORIENTATION_TAG, 1) not in (0, 1)
    except Exception:  # noqa: BLE001 - broken EXIF is ignored, as viewers do
        return False


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _deep_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale to 8 bits by scaling, not clipping (a plain convert("L")
    clips at 255 and turns most 16-bit images white)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size
                                         and values.min() >= 0 and values.max() <= 65535):
        # Pillow opens 16-bit PNG/TIFF as I;16 or I: the full range is 0..65535.
        scaled = values / 257.0
    else:  # float or signed data of unknown range: stretch what is there
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB view of `image`; returns `image` itself when nothing had to change."""
    if _has_rotation(image):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _on_white(image)
    if mode.startswith("I") or mode == "F":
        return _deep_to_8bit(image)
    # CMYK, P without transparency, L, 1, YCbCr, LAB, HSV: Pillow's converters are exact enough.
    return image.convert("RGB")


def _extension_mismatch(path: Path, detected: str) -> bool:
    named = Image.registered_extensions().get(path.suffix.lower())
    return named != detected


def _relative(path: Path, root: Path) -> str:
    """Paths in quarantine details are project-relative, so they read the same on any machine."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # level 3: near-6 size, much faster
    return buffer.getvalue()


def _too_large(size: int, max_bytes: int) -> ImageRejected:
    return ImageRejected("file_too_large", f"{size} bytes, over ingest.max_image_bytes = "
                                           f"{max_bytes}")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _nameable(path: str) -> bool:
    try:
        return b"\x00" not in os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate the filesystem encoding cannot carry
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_confined(source: Path | str | None, folder: Path, max_bytes: int,
                  shown: str | None = None) -> bytes:
    """The bytes of `source`, which must resolve to a regular file inside `folder`.

    Symlinks may point anywhere inside `folder`, never out of it. The file is opened without
    blocking (a FIFO cannot hang the caller) and without following a last-moment symlink, and
    its size is checked on the open descriptor before anything is read, so neither /dev/zero
    nor a huge file can exhaust memory. Errors name the path as the caller gave it (`shown`),
    never where a symlink led.
    """
    if source is None or str(source) == "":
        raise ImageRejected("missing_image", "the record names no image")
    shown = shown if shown is not None else str(source)
    if not _nameable(str(source)):
        raise ImageRejected("path_outside_dataset", "the image path holds a NUL or an "
                            "unencodable character, so it cannot name a file in the dataset")
    home = os.path.realpath(folder)
    resolved = os.path.realpath(source)
    if not _inside(os.path.abspath(source), os.path.abspath(folder)) \
            or not _inside(resolved, home):
        raise ImageRejected("path_outside_dataset", f"{shown} lies outside the source folder "
                                                    "(or is a symlink leading out of it)")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(resolved, flags)
    except FileNotFoundError:
        raise ImageRejected("missing_image", f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink after the check above
            raise ImageRejected("path_outside_dataset", f"{shown} became a symlink") from None
        raise ImageRejected("missing_image", f"{shown} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected("not_a_regular_file", f"{shown} is {_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise _too_large(info.st_size, max_bytes)
        chunks, remaining = [], max_bytes + 1  # +1: a file that grew past the cap is caught
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise ImageRejected("missing_image", f"{shown} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    return data


def store(source: Path | None, folder: Path, store_dir: Path, root: Path,
          limits: ImageLimits) -> StoredImage:
    """Check, normalise and store the image at `source`, which must lie inside `folder`.

    The file name is the sha256 of the ORIGINAL bytes, so the same upload always lands in the same
    place whatever conversion it needed; an RGB JPEG/PNG keeps its bytes, anything else is stored
    as an RGB PNG.
    """
    shown = _relative(Path(source), root) if source is not None else None
    data = read_confined(source, folder, limits.max_bytes, shown)
    decoded = decode(data, limits)
    sha = hashlib.sha256(data).hexdigest()
    extension = "png" if decoded.converted else _KEPT_FORMATS[decoded.format]
    dest = store_dir / sha[:2] / f"{sha}.{extension}"
    if not dest.exists():  # content-addressed: an existing file already holds these bytes
        atomic.write_bytes(dest, _png_bytes(decoded.image) if decoded.converted else data)
    width, height = decoded.image.size
    return StoredImage(
        sha256=sha,
        relative_path=dest.relative_to(root).as_posix(),
        width=width,
        height=height,
        format=decoded.format,
        extension_mismatch=_extension_mismatch(Path(source), decoded.format),
        converted=decoded.converted,
        phash=phash.to_hex(phash.phash(decoded.image)),
    )
