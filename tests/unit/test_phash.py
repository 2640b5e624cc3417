import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from pipeline import phash
from tests.data.fixtures import pattern_image


def _reencoded_jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer)


def test_hash_is_64_bit_and_deterministic():
    image = pattern_image(1, (128, 96))
    value = phash.phash(image)
    assert 0 <= value < 2**64
    assert value == phash.phash(image.copy())
    assert bin(value).count("1") not in (0, 64)  # a real pattern gives a mixed hash


def test_hex_round_trip_and_length():
    value = phash.phash(pattern_image(2))
    text = phash.to_hex(value)
    assert len(text) == 16 and phash.from_hex(text) == value
    with pytest.raises(ValueError):
        phash.from_hex("abc")


@pytest.mark.parametrize("change", [
    lambda im: _reencoded_jpeg(im, 40),
    lambda im: im.resize((im.width // 2, im.height // 2)),
    lambda im: ImageEnhance.Brightness(im).enhance(1.15),
])
def test_small_edits_stay_within_a_few_bits(change):
    image = pattern_image(3, (128, 128))
    assert phash.hamming(phash.phash(image), phash.phash(change(image))) <= 6


def test_different_images_are_far_apart():
    hashes = [phash.phash(pattern_image(seed, (96, 96))) for seed in range(20)]
    distances = [phash.hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) > 10
    assert 24 <= np.mean(distances) <= 40  # about half of the 64 bits


def test_hamming():
    assert phash.hamming(0, 0) == 0
    assert phash.hamming(0, 2**64 - 1) == 64
    assert phash.hamming(0b1011, 0b0001) == 2


def test_pairwise_within_finds_close_pairs_only_across_blocks():
    hashes = np.array([0, 2**64 - 1, 0b111, 0, 2**63], dtype=np.uint64)
    # 2**63 is one bit from 0 but four from 0b111
    assert phash.pairwise_within(hashes, 3, block=2) == [(0, 2), (0, 3), (0, 4), (2, 3), (3, 4)]
    assert phash.pairwise_within(hashes, 0) == [(0, 3)]
    assert phash.pairwise_within(np.array([], dtype=np.uint64), 5) == []
