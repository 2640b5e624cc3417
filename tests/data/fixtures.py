"""Build small jsonl-layout source folders (img/ + <split>.jsonl) from item specs, and the image
bytes to put in them, including the broken kinds ingest must quarantine.

    write_layout(tmp_path / "data/synthetic/hateful_memes", [
        Item("a", text="hello", label=0, image=png_bytes(seed=1)),
        Item("b", image=None),                       # img/b.png named but missing
        Item("c", raw_line=b"{not json"),            # a malformed line, written verbatim
    ])
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_TEXT_PLACEHOLDER = "\x00TEXT\x00"


class _Pattern:
    def __repr__(self) -> str:
        return "PATTERN"


PATTERN = _Pattern()  # Item.image default: a PNG pattern seeded by the item's id


@dataclass
class Item:
    id: str
    text: str | bytes | None = "a plain caption"  # bytes are written raw, not as a JSON string
    label: Any = 0
    split: str = "train"                           # the jsonl file: train, dev_seen, test, ...
    image: bytes | None | _Pattern = PATTERN       # bytes as given (b"": zero bytes); None: no file
    image_name: str | None = None                  # under img/; default "<id>.png"
    raw_line: bytes | None = None                  # written verbatim instead of the JSON object


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def pattern_array(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A smooth random RGB pattern: distinct seeds give distinct perceptual hashes (pure noise
    would not survive the 32x32 shrink as structure)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image)


def pattern_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.fromarray(pattern_array(seed, size), "RGB")


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png_bytes(seed: int = 0, size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(pattern_image(seed, size), "PNG")


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 64), quality: int = 90) -> bytes:
    return encode(pattern_image(seed, size), "JPEG", quality=quality)


def cmyk_jpeg_bytes(seed: int = 0) -> bytes:
    return encode(pattern_image(seed).convert("CMYK"), "JPEG")


def palette_png_bytes(seed: int = 0, transparent_index: int | None = None) -> bytes:
    image = pattern_image(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if transparent_index is None:
        return encode(image, "PNG")
    return encode(image, "PNG", transparency=transparent_index)


def rgba_png_bytes(seed: int = 0, alpha: int = 0) -> bytes:
    image = pattern_image(seed).convert("RGBA")
    image.putalpha(alpha)
    return encode(image, "PNG")


def gray16_png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    """A 16-bit greyscale ramp over the full 0..65535 range."""
    ramp = np.linspace(0, 65535, size[0], dtype=np.float64)
    values = np.tile(ramp, (size[1], 1)).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[:int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header declares width x height 1-bit pixels but carries almost
    no data: what a decompression bomb looks like before decoding."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _line(item: Item) -> bytes:
    if item.raw_line is not None:
        return item.raw_line
    name = item.image_name or f"{item.id}.png"
    fields = {"id": item.id, "img": f"img/{name}", "label": item.label}
    if isinstance(item.text, bytes):
        fields["text"] = _TEXT_PLACEHOLDER
        encoded = json.dumps(fields, ensure_ascii=False).encode("utf-8")
        return encoded.replace(json.dumps(_TEXT_PLACEHOLDER).encode("utf-8"),
                               b'"' + item.text + b'"')
    fields["text"] = item.text
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def write_layout(root: Path, items: list[Item]) -> Path:
    """Write `items` as a jsonl-layout folder at `root` (created); returns `root`."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[bytes]] = {}
    for item in items:
        lines.setdefault(item.split, []).append(_line(item))
        if item.raw_line is not None or item.image is None:
            continue
        data = item.image if isinstance(item.image, bytes) else png_bytes(seed=seed_of(item.id))
        (root / "img" / (item.image_name or f"{item.id}.png")).write_bytes(data)
    for split, split_lines in lines.items():
        (root / f"{split}.jsonl").write_bytes(b"\n".join(split_lines) + b"\n")
    return root
