"""Drawing and encoding the synthetic images; every pixel follows from an ImageSpec."""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .vocabulary import SCENES

# Fixed encoder settings: part of the byte-for-byte contract.
PNG_OPTIONS = {"compress_level": 6, "optimize": False}
JPEG_OPTIONS = {"quality": 90, "subsampling": 0, "optimize": False, "progressive": False}
NEAR_DUPLICATE_JPEG_QUALITY = 80


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image; rendering is a pure function of it."""

    width: int
    height: int
    fmt: str                     # "png" or "jpg"
    scene: str                   # scene phrase, also written in the banner
    banner: str
    shape: str                   # the drawn subject
    colour: str
    rgb: tuple[int, int, int]    # the colour after jitter
    cx: int
    cy: int
    radius: int
    rotation: int                # degrees
    texture_seed: int
    glitch: bool = False         # moderation7 Manipulated Content
    badge: bool = False          # moderation7 Imposter Content


def _polygon(shape: str, cx: float, cy: float, r: float,
             degrees: float) -> list[tuple[float, float]]:
    """Vertices of a subject shape around (cx, cy), radius r, rotated."""
    if shape == "square":
        points = [(np.cos(a), np.sin(a)) for a in np.radians([45, 135, 225, 315])]
        points = [(1.1 * x, 1.1 * y) for x, y in points]
    elif shape == "triangle":
        points = [(1.2 * np.cos(a), 1.2 * np.sin(a)) for a in np.radians([-90, 30, 150])]
    elif shape == "spiked star":
        angles = np.radians(np.arange(24) * 15 - 90)
        points = [(rad * np.cos(a), rad * np.sin(a))
                  for a, rad in zip(angles, [1.15, 0.5] * 12)]
    elif shape == "x cross":
        points = _x_cross_outline(0.3)
        degrees += 45
    elif shape == "bolt":
        points = [(-0.25, -1.1), (0.5, -1.1), (0.15, -0.2), (0.6, -0.2), (-0.4, 1.15),
                  (-0.05, 0.15), (-0.5, 0.15)]
    elif shape == "diamond":
        points = [(0.0, -1.2), (0.85, 0.0), (0.0, 1.2), (-0.85, 0.0)]
    elif shape == "hexagon":
        points = [(1.05 * np.cos(a), 1.05 * np.sin(a)) for a in np.radians(np.arange(6) * 60)]
    elif shape == "arrow":
        points = [(0.0, -1.15), (0.9, -0.1), (0.35, -0.1), (0.35, 1.1), (-0.35, 1.1),
                  (-0.35, -0.1), (-0.9, -0.1)]
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        xs = 16 * np.sin(t) ** 3 / 15
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 15
        points = list(zip(xs, ys + 0.1))
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    a = np.radians(degrees)
    cos, sin = np.cos(a), np.sin(a)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _x_cross_outline(w: float) -> list[tuple[float, float]]:
    # A plus sign traced clockwise; rotated 45 degrees by the caller it becomes an X.
    return [(-w, -1.1), (w, -1.1), (w, -w), (1.1, -w), (1.1, w), (w, w), (w, 1.1), (-w, 1.1),
            (-w, w), (-1.1, w), (-1.1, -w), (-w, -w)]


def _background(spec: ImageSpec) -> np.ndarray:
    _, sky, ground, decoration = next(s for s in SCENES if s[0] == spec.scene)
    h, w = spec.height, spec.width
    rng = np.random.default_rng(spec.texture_seed)
    horizon = int(h * rng.uniform(0.55, 0.75))
    rows = np.linspace(0.0, 1.0, h)[:, None, None]
    sky_arr, ground_arr = np.array(sky, float), np.array(ground, float)
    image = np.where(np.arange(h)[:, None, None] < horizon,
                     sky_arr * (1.08 - 0.16 * rows), ground_arr * (1.05 - 0.1 * rows))
    image = np.broadcast_to(image, (h, w, 3)).copy()
    if decoration == "buildings":
        x = 0
        while x < w:
            bw, bh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 10, h // 3))
            image[max(0, horizon - bh):horizon, x:x + bw] *= rng.uniform(0.82, 0.95)
            x += bw + int(rng.integers(2, 8))
    elif decoration == "waves":
        ys = np.arange(h)[:, None]
        xs = np.arange(w)[None, :]
        band = np.sin(xs / max(4, w / 12) + ys / 3.0) > 0.6
        image[horizon:][band[horizon:]] *= 0.93
    elif decoration == "tiles":
        step = max(6, w // 8)
        image[horizon:, ::step] *= 0.85
        image[horizon::max(4, step // 2), :] *= 0.85
    # Coarse paper-like grain: 3x3-pixel cells keep PNGs small while still varying every image.
    grain = rng.normal(0.0, 5.0, size=(-(-h // 3), -(-w // 3), 1))
    image += np.repeat(np.repeat(grain, 3, axis=0), 3, axis=1)[:h, :w]
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_subject(canvas: Image.Image, spec: ImageSpec) -> Image.Image:
    # Drawn at twice the size in a box around the subject and shrunk, for smooth edges.
    scale = 2
    half = int(spec.radius * 1.35) + 2
    box = 2 * half * scale
    layer = Image.new("RGBA", (box, box), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    c, r = box / 2, spec.radius * scale
    outline = max(2, r // 10)
    if spec.shape == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=spec.rgb + (255,),
                     outline=(20, 20, 20, 255), width=outline)
    else:
        draw.polygon(_polygon(spec.shape, c, c, r, spec.rotation), fill=spec.rgb + (255,),
                     outline=(20, 20, 20, 255), width=outline)
    layer = layer.resize((2 * half, 2 * half), Image.Resampling.BOX)
    canvas.paste(layer, (spec.cx - half, spec.cy - half), layer)
    return canvas


def _corner_away_from_subject(spec: ImageSpec, size: int) -> tuple[int, int]:
    # A bottom corner of the central square (kept by a centre crop), on the side away from the
    # subject so that the subject stays readable.
    short = min(spec.width, spec.height)
    x0, y0 = (spec.width - short) // 2, (spec.height - short) // 2
    x = x0 + 2 if spec.cx > spec.width / 2 else x0 + short - size - 2
    return x, y0 + short - size - 2


def _draw_glitch(image: Image.Image, spec: ImageSpec) -> Image.Image:
    size = int(min(spec.width, spec.height) * 0.36)
    x0, y0 = _corner_away_from_subject(spec, size)
    cell = max(3, size // 6)
    draw = ImageDraw.Draw(image)
    for row in range(0, size, cell):
        for col in range(0, size, cell):
            dark = (row // cell + col // cell) % 2 == 0
            draw.rectangle((x0 + col, y0 + row, x0 + min(col + cell, size) - 1,
                            y0 + min(row + cell, size) - 1),
                           fill=(10, 10, 10) if dark else (250, 250, 250))
    # Two bands of rows slid sideways, as a corrupted edit would leave.
    pixels = np.asarray(image).copy()
    rng = np.random.default_rng(spec.texture_seed + 1)
    for _ in range(2):
        top = int(rng.integers(0, spec.height - 4))
        band = max(2, spec.height // 14)
        pixels[top:top + band] = np.roll(pixels[top:top + band], spec.width // 6, axis=1)
    return Image.fromarray(pixels)


def _draw_badge(image: Image.Image, spec: ImageSpec) -> Image.Image:
    size = int(min(spec.width, spec.height) * 0.3)
    x0, y0 = _corner_away_from_subject(spec, size)
    shield = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size * 0.55), (x0 + size / 2, y0 + size),
              (x0, y0 + size * 0.55)]
    draw = ImageDraw.Draw(image)
    draw.polygon(shield, fill=(238, 192, 36), outline=(60, 40, 10), width=max(1, size // 12))
    check = [(x0 + size * 0.22, y0 + size * 0.42), (x0 + size * 0.43, y0 + size * 0.64),
             (x0 + size * 0.8, y0 + size * 0.2)]
    draw.line(check, fill=(255, 255, 255), width=max(2, size // 8))
    return image


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _banner_lines(text: str) -> list[str]:
    """The banner on one line, or on two balanced lines when it is long."""
    words = text.split()
    if len(words) < 3:
        return [text]
    cut = min(range(1, len(words)),
              key=lambda k: abs(len(" ".join(words[:k])) - len(" ".join(words[k:]))))
    return [" ".join(words[:cut]), " ".join(words[cut:])]


def _fitting_size(draw: ImageDraw.ImageDraw, line: str, size: int, width: int) -> int:
    # Text length grows about linearly with the font size.
    length = max(1.0, draw.textlength(line, font=_font(size)))
    return max(8, min(size, int(size * width * 0.94 / length)))


def _draw_banner(image: Image.Image, spec: ImageSpec) -> Image.Image:
    draw = ImageDraw.Draw(image)
    size = max(9, spec.height // 9)
    lines = [spec.banner]
    if _fitting_size(draw, spec.banner, size, spec.width) < 0.75 * size:
        lines = _banner_lines(spec.banner)
    size = min(_fitting_size(draw, line, size, spec.width) for line in lines)
    font = _font(size)
    y = max(2, spec.height // 40)
    for line in lines:
        width = draw.textlength(line, font=font)
        draw.text(((spec.width - width) / 2, y), line, font=font, fill=(255, 255, 255),
                  stroke_width=max(1, size // 7), stroke_fill=(0, 0, 0))
        y += int(size * 1.1)
    return image


def render_image(spec: ImageSpec) -> Image.Image:
    image = Image.fromarray(_background(spec))
    image = _draw_subject(image, spec)
    if spec.badge:
        image = _draw_badge(image, spec)
    if spec.glitch:
        image = _draw_glitch(image, spec)
    return _draw_banner(image, spec)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", **PNG_OPTIONS)
    elif fmt == "jpg":
        image.save(buffer, format="JPEG", **JPEG_OPTIONS)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buffer.getvalue()


def _near_duplicate_bytes(original: bytes) -> bytes:
    # Slightly smaller and recompressed: different bytes, same picture to a perceptual hash.
    image = Image.open(io.BytesIO(original)).convert("RGB")
    shrunk = image.resize((max(16, round(image.width * 0.94)), max(16, round(image.height * 0.94))),
                          Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    shrunk.save(buffer, format="JPEG", **{**JPEG_OPTIONS, "quality": NEAR_DUPLICATE_JPEG_QUALITY})
    return buffer.getvalue()


def _broken_bytes(kind: str, original: bytes) -> bytes | None:
    if kind == "truncated_png":
        png = encode_image(Image.open(io.BytesIO(original)).convert("RGB"), "png")
        return png[: len(png) // 2]
    if kind == "zero_byte":
        return b""
    if kind == "not_an_image":
        return b"this is a text file that only pretends to be a PNG image\n"
    if kind == "missing_image":
        return None  # the line points at a file that is never written
    raise ValueError(f"unknown broken kind {kind!r}")
