"""The capstone's inputs, made in memory from installed packages: a real photo, seeded pictures, hostile files.

Nothing is downloaded and no image file is committed. :mod:`helpers.capstone.images`
re-exports every name here (``images.sample_photo()``), where the lessons look for them.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache

from PIL import Image, ImageDraw, ImageOps


@cache
def sample_photo() -> bytes:
    """matplotlib's sample ``grace_hopper.jpg`` (512x600, 61 KB): a real photo with one face, no download."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with open(path, "rb") as file:
        return file.read()


def generated_image(seed: int, size: tuple[int, int] = (800, 600), fmt: str = "PNG") -> bytes:
    """A seeded picture: a two-color gradient and a dozen shapes; same seed, same bytes.

    ``fmt`` is any format Pillow can write, so a test can also make a valid image in a
    format the service refuses (say "GIF").
    """
    rng = random.Random(seed)

    def color() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    gradient = Image.linear_gradient("L").resize(size)
    img = ImageOps.colorize(gradient, color(), color()).convert("RGB")
    draw = ImageDraw.Draw(img)
    width, height = size
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randrange(10, max(11, width // 3)), y0 + rng.randrange(10, max(11, height // 3)))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=color())
        else:
            draw.rectangle(box, fill=color())
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


EXIF_ROTATED_UPRIGHT_SIZE = (300, 200)
EXIF_ROTATED_QUADRANTS = {
    "top-left": (255, 0, 0),
    "top-right": (0, 160, 0),
    "bottom-left": (0, 0, 255),
    "bottom-right": (255, 255, 0),
}
"""``exif_rotated_jpeg``'s picture once upright: four solid quadrants (red, green / blue, yellow)."""


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways (200x300) with EXIF Orientation=6, as phones write them; upright it is 300x200.

    Orientation 6 means "rotate 90 degrees clockwise to view", so the stored pixels are the
    upright picture turned 90 degrees counter-clockwise.
    """
    width, height = EXIF_ROTATED_UPRIGHT_SIZE
    picture = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(picture)
    half_w, half_h = width // 2, height // 2
    corners = {"top-left": (0, 0), "top-right": (half_w, 0), "bottom-left": (0, half_h), "bottom-right": (half_w, half_h)}
    for name, (x, y) in corners.items():
        draw.rectangle((x, y, x + half_w - 1, y + half_h - 1), fill=EXIF_ROTATED_QUADRANTS[name])
    stored = picture.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC (tests build hostile PNGs from these)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with a few rows of data (~100 bytes).

    30000x30000 would decode to 2.7 GB; a guard that reads the header refuses it first.
    """
    rows = zlib.compress(b"".join(b"\x00" + bytes(3 * min(width, 256)) for _ in range(4)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """The sample photo cut off at 60%: the header is fine, the pixel data stops early."""
    photo = sample_photo()
    return photo[: len(photo) * 6 // 10]


def corrupt_png() -> bytes:
    """A small PNG whose compressed pixel data was overwritten: it opens, then fails to decode."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "PNG")
    data = bytearray(out.getvalue())
    start = data.index(b"IDAT") + 4
    data[start : start + 24] = bytes(byte ^ 0x55 for byte in data[start : start + 24])
    return bytes(data)


def not_an_image() -> bytes:
    """Text, as a client might send under the name holiday.jpg with Content-Type image/jpeg."""
    return b"This is not a photo, just text in a file named holiday.jpg.\n"
