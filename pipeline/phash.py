"""A 64-bit DCT perceptual hash: images that look alike get hashes a small Hamming distance apart.

Recipe (the classic pHash): greyscale, shrink to 32x32 so only coarse structure is left, take the
2-D DCT, keep the 8x8 lowest frequencies, and set a bit where a coefficient is above their median.
Re-encoding, resizing and mild brightness changes move only a few bits; different images differ in
about half of them.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIZE = 8  # 8x8 = 64 bits
_SAMPLE_SIDE = 32  # DCT input side: four times the hash side, as in the original pHash
HEX_CHARS = HASH_SIZE * HASH_SIZE // 4


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of `image` as an unsigned int (bit 63 = coefficient (0, 0))."""
    grey = image.convert("L").resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = dctn(pixels, type=2, norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    # The DC term is the mean brightness; it would dominate the median, so it is left out of it.
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def to_hex(value: int) -> str:
    return f"{value:0{HEX_CHARS}x}"


def from_hex(text: str) -> int:
    if len(text) != HEX_CHARS:
        raise ValueError(f"a phash is {HEX_CHARS} hex characters, got {text!r}")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def pairwise_within(hashes: np.ndarray, threshold: int, block: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i < j) of `hashes` (uint64) at Hamming distance <= threshold.

    Quadratic in len(hashes), so callers pass small groups (dedupe: one caption's images); the
    comparison runs in row blocks to keep memory at block x n.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        distances = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(distances <= threshold)):
            i = int(i) + start
            if i < j:
                pairs.append((i, int(j)))
    return pairs
