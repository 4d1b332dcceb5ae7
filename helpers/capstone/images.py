"""Images for the capstone: refuse hostile uploads, then do real, CPU-bound Pillow work.

Two jobs, kept apart on purpose:

* **Validation** (``inspect_upload``) treats every upload as hostile. The format is sniffed
  from the bytes by Pillow itself, restricted to ``ACCEPTED_FORMATS``; the file name and the
  Content-Type header are never consulted (there is no parameter to pass them). The pixel
  budget is checked from the header, before a single pixel is decoded, so a 100 KB file that
  declares 30000x30000 pixels costs microseconds, not gigabytes. Then the image is fully
  decoded with ``load()`` (``verify()`` skips the pixel data and misses truncated files).
  Every refusal is an ``ImageRejected`` that carries its HTTP status and an RFC 9457 body.
* **Processing** (``process_image``) stands in for an AI model: synchronous and CPU-bound,
  so callers run it with ``asyncio.to_thread`` and the event loop stays free. Pillow releases
  the GIL in the operations used here (resampling, Gaussian blur, unsharp mask, JPEG coding),
  so two jobs in two threads run on two cores. ``work`` scales the cost linearly, the way the
  number of denoising steps scales the cost of a diffusion model.

The inputs the lesson needs (a photo, generated images, and hostile files) are made in
memory from installed packages: nothing is downloaded and no image file is committed.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import struct
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Final

from PIL import Image, ImageDraw, ImageFile, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError

from helpers.core.problems import PROBLEM_BASE

if TYPE_CHECKING:
    import cv2

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
"""Pillow format names; the only decoders Pillow may try on an upload (``Image.open(formats=...)``)."""
CONTENT_TYPES: Final = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
"""The Content-Type to store an accepted upload under: derived from the sniffed format, never from the client."""
MAX_UPLOAD_BYTES: int = 8 * 1024 * 1024
MAX_PIXELS: int = 40_000_000
"""Per-image pixel budget, checked from the header before decoding (a 40 MP RGB image decodes to 120 MB)."""
MAX_SIDE: int = 10_000
"""No side may be longer, whatever the pixel count: a 1 x 39,999,999 PNG (78 KB) fits the pixel budget, and
resampling it took ~10 s with the GIL held and 2.4-2.8 GB (measured), stopping every service in the process."""
MAX_ASPECT_RATIO: float = 10.0
"""Long side / short side at most this (a phone panorama is ~4-8); thinner shapes cost resamplers far more per pixel."""
MAX_PIXELS_BY_FORMAT: Final = {"WEBP": 16_000_000}
"""Lower budgets where decoding costs more per pixel. Pillow decodes WebP through libwebp's animation decoder,
which keeps about four RGBA copies: a 40 MP WebP took +615 MB to validate, 16 MP takes about 250 MB (measured)."""
WORKING_MAX_SIDE: int = 3072
"""``process_image`` works on a copy at most this wide and high (7 MP at 4:3): every rendition is at most 1024 px
and the filter works at 4 MP, so more pixels only cost time and memory (a 40 MP PNG took +915 MB and 12 s without
this copy, measured). A 12 MP phone photo (4032x3024) is worked on at 3072x2304; the caption still says 4032x3024."""
IMAGE_WORK_SLOTS: int = 2
"""How many uploads the Upload service decodes at once; more wait their turn (memory stays bounded under a burst)."""
UPLOAD_SIZE_KEY = "course.upload_size"
"""``img.info`` entry with the upright (width, height) of the upload, when ``process_image`` works on a smaller copy."""

STEPS: tuple[str, ...] = ("upright", "thumbnails", "filter", "caption")
"""The steps of ``process_image``, in order; progress is reported after each."""
THUMBNAIL_SIZES: tuple[int, ...] = (128, 512, 1024)
FILTER_NAME = "poster"
"""The rendition name of ``apply_filter``'s output."""

WORKING_UPSCALE = 2
"""The filter works at twice the image's width and height (4x the pixels), like a model's input size..."""
WORKING_MAX_PIXELS = 4_000_000
"""...but never above 4 MP, so a large photo costs more than a small one, up to a bound (memory stays ~12 MB)."""
REFINEMENT_STEPS_PER_WORK = 8
"""Blur-and-sharpen passes per unit of ``work``; 8 makes grace_hopper.jpg take ~0.6 s at work=1 (see process_image)."""
MAX_WORK = 100.0
FACE_MAX_SIDE = 640
"""Face detection runs on a copy at most this wide and high: it bounds the cost (~40 ms for a portrait here)."""
JPEG_QUALITY = 85

_OPEN_LOCK = threading.Lock()
"""``warnings.catch_warnings`` swaps process-wide state; the lock keeps two threads' blocks from interleaving."""


class ImageRejected(ValueError):
    """An upload refused before or during decoding, with everything an HTTP error response needs."""

    def __init__(self, status: int, title: str, detail: str, slug: str) -> None:
        super().__init__(detail)
        self.status = status
        """400 empty, 413 too many bytes or pixels, 415 not an accepted image, 422 truncated or corrupt."""
        self.title = title
        self.detail = detail
        """One sentence: what was wrong and what is accepted."""
        self.type = PROBLEM_BASE + slug


@dataclass(frozen=True)
class ImageInfo:
    """What the header and a full decode said about an accepted upload."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int
    """EXIF Orientation (1-8); 1 when there is none or it is invalid. ``width``/``height`` are as stored."""

    @property
    def content_type(self) -> str:
        """The type to store the upload under, from the sniffed format (the client's header is not trusted)."""
        return CONTENT_TYPES[self.format]

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied: orientations 5-8 swap the sides."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


@dataclass(frozen=True)
class Rendition:
    """One output of the processor, e.g. ``Rendition("thumb-128", b"...", "image/jpeg")``."""

    name: str
    data: bytes
    content_type: str


# --- validation ---------------------------------------------------------------------------


def _accepted_names() -> str:
    """'JPEG, PNG or WEBP', for messages."""
    return ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1]


def _check_byte_count(data: bytes, max_bytes: int) -> None:
    """Refuse an empty upload (400) or one over the byte limit (413), before Pillow sees it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"an upload is bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRejected(400, "Empty upload", f"The upload is empty: send the image's bytes ({_accepted_names()}).", "empty")
    if len(data) > max_bytes:
        raise ImageRejected(
            413,
            "Upload too large",
            f"The upload is {len(data):,} bytes and the limit is {max_bytes:,} bytes ({max_bytes / 2**20:g} MiB).",
            "too-many-bytes",
        )


def _refuse_truncated_loading() -> None:
    """Fail loudly if some code switched on Pillow's process-wide "load truncated images" setting.

    With it on, Pillow pads a truncated file with grey instead of failing, and a broken upload
    would be accepted. Flipping it back here would change it for every other thread, so the
    configuration error is reported instead.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated uploads would be accepted; "
            "set it back to False before validating uploads"
        )


def _pixel_bomb(detail: str) -> ImageRejected:
    return ImageRejected(413, "Image has too many pixels", detail, "too-many-pixels")


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Parse the header only, with the decoders limited to ACCEPTED_FORMATS and Pillow's bomb guard as an error.

    Pillow warns (``DecompressionBombWarning``) above ``Image.MAX_IMAGE_PIXELS`` and raises
    (``DecompressionBombError``) above twice that; the warning is turned into an error here.
    """
    _refuse_truncated_loading()
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = str(exc).rstrip(".")
        raise _pixel_bomb(f"Pillow refused the image before decoding as a possible decompression bomb ({reason}).") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            415,
            "Not an accepted image",
            f"The bytes are not a {_accepted_names()} image (read from the bytes, never from the name or Content-Type).",
            "not-an-image",
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise _corrupt("image", exc) from exc


def _check_pixel_budget(img: Image.Image, max_pixels: int) -> None:
    """Refuse (413) an image whose header declares more than ``max_pixels`` pixels, before decoding it."""
    width, height = img.size
    limit = min(max_pixels, MAX_PIXELS_BY_FORMAT.get(_format_name(img), max_pixels))
    if width * height > limit:
        per_format = f" for {_format_name(img)}" if limit < max_pixels else ""
        raise _pixel_bomb(
            f"The image declares {width}x{height} = {width * height:,} pixels and the limit{per_format} is {limit:,},"
            " so it was refused before decoding."
        )


def _check_shape(img: Image.Image) -> None:
    """Refuse (413) a side over ``MAX_SIDE`` or a long/short ratio over ``MAX_ASPECT_RATIO``, from the header.

    413, like the pixel budget (lesson 07 and lab 07 answer a decompression bomb with 413): the status says that
    the content is larger than the service will process, and for an image what it will process is the decoded
    pixels, not the compressed bytes. The type URI and the detail say which limit it was, so a client can tell
    "send fewer bytes" (too-many-bytes) from "send a smaller picture" (too-many-pixels, image-shape).
    """
    width, height = img.size
    long_side, short_side = max(width, height), max(1, min(width, height))
    if long_side > MAX_SIDE:
        reason = f"a side is longer than {MAX_SIDE:,} pixels"
    elif long_side / short_side > MAX_ASPECT_RATIO:
        reason = f"its sides' ratio is {long_side / short_side:,.1f}:1 and at most {MAX_ASPECT_RATIO:g}:1 is accepted"
    else:
        return
    raise ImageRejected(
        413,
        "Image has an extreme shape",
        f"The image declares {width}x{height} pixels and {reason}, so it was refused before decoding.",
        "image-shape",
    )


def _corrupt(what: str, exc: BaseException) -> ImageRejected:
    reason = str(exc).rstrip(".") or type(exc).__name__
    return ImageRejected(
        422,
        "Truncated or corrupt image",
        f"The {what} could not be decoded ({reason}): upload the complete, unmodified file.",
        "corrupt-image",
    )


def _load_fully(img: ImageFile.ImageFile) -> None:
    """Decode every pixel of the first frame, so a truncated or corrupt file fails here (422), not later."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise _corrupt(f"{img.format} image", exc) from exc


def _format_name(img: Image.Image) -> str:
    """The accepted format the bytes are: an MPO (a JPEG with extra pictures, as many cameras write) is a JPEG."""
    name = img.format or ""
    return "JPEG" if name == "MPO" else name


def _orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1-8), or 1 when there is none or it holds garbage."""
    value = img.getexif().get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode(
    data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> Image.Image:
    """The fully decoded first frame of an upload, after every check; raises ``ImageRejected``.

    The processor decodes stored bytes through this too: bytes in storage are not
    trusted just because the upload service checked them once. With ``max_side`` the
    result is a working copy at most that wide and high: a JPEG is decoded at a reduced
    scale from the start (``draft``: 1/2, 1/4 or 1/8, still reading every byte), other
    formats are shrunk right after decoding, and ``info[UPLOAD_SIZE_KEY]`` keeps the size
    as stored.
    """
    _check_byte_count(data, max_bytes)
    img = _open_header(bytes(data))
    _check_pixel_budget(img, max_pixels)
    _check_shape(img)
    stored_size = img.size
    if max_side is not None and max(stored_size) > max_side:
        img.draft(img.mode, _fitting(stored_size, max_side))
    _load_fully(img)
    if max_side is None or max(stored_size) <= max_side:
        return img
    working: Image.Image = img
    if max(img.size) > max_side:
        working = img.resize(_fitting(img.size, max_side), Image.Resampling.BOX)  # P and 1 modes: NEAREST, by Pillow
    working.info[UPLOAD_SIZE_KEY] = stored_size
    return working


def _fitting(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down, aspect kept, to fit a ``max_side`` x ``max_side`` box."""
    scale = max_side / max(size)
    return (max(1, min(max_side, round(size[0] * scale))), max(1, min(max_side, round(size[1] * scale))))


def inspect_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check an untrusted upload and say what it is; raises ``ImageRejected`` (400/413/415/422).

    Order matters: byte count, then the format from the header, then the pixel budget from
    the header, and only then the full decode. There is deliberately no parameter for the
    file name or the Content-Type: neither says anything true about the bytes.
    """
    img = decode(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return ImageInfo(_format_name(img), img.width, img.height, img.mode, _orientation(img))


# --- processing ---------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy; transparent parts become white, so every later step (and JPEG) gets one mode."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I"):  # 16-bit greyscale PNG: scale 0..65535 to 0..255 (a plain convert clips at 255)
        return img.convert("I").point(lambda value: value * (1 / 256)).convert("RGB")
    return img.convert("RGB")


def upright(img: Image.Image) -> Image.Image:
    """The image the way the camera held it (EXIF Orientation applied), in RGB."""
    return to_rgb(ImageOps.exif_transpose(img))


def open_upright(data: bytes) -> Image.Image:
    """Decode an upload with every check of ``decode``, then turn it upright (RGB)."""
    return upright(decode(data))


def encode_jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of an RGB image, at the quality every rendition uses."""
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def thumbnails(img: Image.Image, sizes: tuple[int, ...] = THUMBNAIL_SIZES) -> list[Rendition]:
    """One JPEG per size, each fitting in a ``size`` x ``size`` box with the aspect ratio kept.

    Like ``Image.thumbnail`` it never enlarges: a 512x600 photo's "thumb-1024" is 512x600.
    """
    renditions = []
    for size in sizes:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"thumbnail sizes are positive integers (pixels), got {size!r}")
        thumb = to_rgb(img)
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        renditions.append(Rendition(f"thumb-{size}", encode_jpeg(thumb), "image/jpeg"))
    return renditions


def refinement_steps(work: float) -> int:
    """How many blur-and-sharpen passes ``work`` buys: ``REFINEMENT_STEPS_PER_WORK`` per unit, linearly."""
    if isinstance(work, bool) or not isinstance(work, int | float) or not math.isfinite(work) or not 0 <= work <= MAX_WORK:
        raise ValueError(f"work is a number from 0 to {MAX_WORK:g} (1.0 is a normal image), got {work!r}")
    return round(work * REFINEMENT_STEPS_PER_WORK)


def _working_copy(img: Image.Image) -> Image.Image:
    """The image at the filter's working resolution: upscaled ``WORKING_UPSCALE``x, capped at ``WORKING_MAX_PIXELS``."""
    scale = min(WORKING_UPSCALE, math.sqrt(WORKING_MAX_PIXELS / max(1, img.width * img.height)))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return to_rgb(img).resize(size, Image.Resampling.LANCZOS)


def _refine(current: Image.Image, original: Image.Image) -> Image.Image:
    """One pass: blur away fine texture, sharpen the edges that survive, then pull 35% back towards the original.

    The pull-back makes the passes converge: without it, repeated blur-and-sharpen grows
    stripes and dots (a Turing pattern) and the picture is gone after ~50 passes.
    """
    sharpened = current.filter(ImageFilter.GaussianBlur(1.2)).filter(ImageFilter.UnsharpMask(radius=2, percent=140, threshold=3))
    return Image.blend(sharpened, original, 0.35)


def apply_filter(img: Image.Image, *, work: float = 1.0) -> Rendition:
    """A poster look: local contrast from ``refinement_steps(work)`` passes, then 8 levels per channel; at most 1024 px.

    This is where ``work`` goes: each pass at the working resolution costs the same, so the
    cost is linear in ``work``; the passes converge, so more work never ruins the picture.
    """
    original = _working_copy(img)
    working = original
    for _ in range(refinement_steps(work)):
        working = _refine(working, original)
    result = ImageOps.posterize(ImageOps.autocontrast(working, cutoff=1), 3)
    result.thumbnail((THUMBNAIL_SIZES[-1], THUMBNAIL_SIZES[-1]), Image.Resampling.LANCZOS)
    return Rendition(FILTER_NAME, encode_jpeg(result), "image/jpeg")


# --- caption --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurements:
    """What ``caption`` measured, as numbers, so a test (or a curious learner) can check the words."""

    width: int
    height: int
    brightness: float
    """Mean luminance, 0 (black) to 255 (white)."""
    colors: tuple[str, ...]
    """Color names covering most of the picture, most common first."""
    faces: int | None
    """Frontal faces found by OpenCV's Haar cascade; None when OpenCV is not installed."""


def shape_word(width: int, height: int) -> str:
    """'portrait-oriented', 'landscape-oriented' or 'square' (within 5%)."""
    ratio = width / height
    if ratio > 1.05:
        return "landscape-oriented"
    if ratio < 1 / 1.05:
        return "portrait-oriented"
    return "square"


def brightness_word(brightness: float) -> str:
    """A word for a mean luminance (0-255)."""
    for limit, word in ((45, "very dark"), (95, "fairly dark"), (160, "medium-bright"), (210, "bright")):
        if brightness < limit:
            return word
    return "very bright"


def color_name(rgb: tuple[int, int, int]) -> str:
    """A plain-English name for an sRGB color, from its hue, saturation and value."""
    hue, sat, val = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    if val < 0.15:
        return "black"
    if sat < 0.18:
        return "white" if val > 0.85 else "light grey" if val > 0.65 else "grey" if val > 0.35 else "dark grey"
    degrees = hue * 360
    hues = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (255, "blue"), (290, "purple"))
    name = next((word for limit, word in hues if degrees < limit), "pink" if degrees < 345 else "red")
    if name in ("red", "orange") and val < 0.6:
        return "brown"
    if val < 0.4:
        return f"dark {name}"
    if val > 0.8 and sat < 0.5:
        return f"light {name}"
    return name


def dominant_colors(img: Image.Image, count: int = 2, min_share: float = 0.15) -> tuple[str, ...]:
    """The ``count`` most common color names that each cover at least ``min_share`` of the picture.

    Median-cut quantisation of a 64x64 copy to 8 colors: deterministic and a few ms.
    """
    small = to_rgb(img).resize((64, 64), Image.Resampling.BOX)
    quantised = small.quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    shares: Counter[str] = Counter()
    for pixels, index in quantised.getcolors() or []:
        assert isinstance(index, int), "a P-mode image's colors are palette indexes"
        r, g, b = palette[3 * index : 3 * index + 3]
        shares[color_name((r, g, b))] += pixels
    total = sum(shares.values()) or 1
    ranked = sorted(shares.items(), key=lambda item: (-item[1], item[0]))
    named = tuple(name for name, pixels in ranked if pixels / total >= min_share)[:count]
    return named or (ranked[0][0],)


_cascades = threading.local()
"""One Haar classifier per thread: OpenCV does not promise that one object is safe in two threads at once."""


def _face_cascade() -> cv2.CascadeClassifier:
    """This thread's frontal-face classifier, loaded once (~8 ms) from the XML OpenCV ships in cv2/data."""
    import cv2

    cascade: cv2.CascadeClassifier | None = getattr(_cascades, "frontal_face", None)
    if cascade is None:
        path = str(resources.files("cv2") / "data" / "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"OpenCV could not load its bundled face cascade from {path}")
        _cascades.frontal_face = cascade
    return cascade


def count_faces(img: Image.Image) -> int | None:
    """Frontal faces found by OpenCV's Haar cascade (Viola-Jones, 2001), or None if OpenCV is not installed.

    A 20-year-old detector, honest about being one: it finds upright, frontal faces and
    misses profiles and small faces. OpenCV is imported here, not at module import, so the
    course works (with "faces not checked" captions) where it is not installed.
    Measured on a 2-core cloud VM (AMD EPYC, OpenCV 4.14): grace_hopper.jpg ~45 ms (OpenCV
    uses both cores; ~70 ms on one); the worst case seen, 800x600 random noise (detected at
    640x480), ~100 ms; the first call in a process adds ~100 ms to import OpenCV.
    """
    try:
        import cv2  # noqa: F401 - imported to learn whether OpenCV is installed; _face_cascade uses it
        import numpy
    except ImportError:
        return None
    grey = to_rgb(img).convert("L")
    grey.thumbnail((FACE_MAX_SIDE, FACE_MAX_SIDE), Image.Resampling.BOX)
    faces = _face_cascade().detectMultiScale(numpy.asarray(grey), scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return len(faces)


def upload_size(img: Image.Image) -> tuple[int, int]:
    """The upright (width, height) of the upload ``img`` was made from (``process_image`` may work on a smaller copy)."""
    stored = img.info.get(UPLOAD_SIZE_KEY)
    if not (isinstance(stored, tuple) and len(stored) == 2):
        return img.size
    width, height = stored
    turned = (img.width > img.height) != (width > height) and img.width != img.height
    return (height, width) if turned else (width, height)


def measure(img: Image.Image) -> Measurements:
    """Everything the caption says, as numbers; the size is the upload's, even when ``img`` is a working copy."""
    brightness = ImageStat.Stat(to_rgb(img).convert("L")).mean[0]
    width, height = upload_size(img)
    return Measurements(width, height, brightness, dominant_colors(img), count_faces(img))


def faces_phrase(faces: int | None) -> str:
    """'1 face found (OpenCV Haar cascade)', or says that faces were not looked for."""
    if faces is None:
        return "faces not checked (OpenCV is not installed)"
    counted = "no faces" if faces == 0 else "1 face" if faces == 1 else f"{faces} faces"
    return f"{counted} found (OpenCV Haar cascade)"


def caption(img: Image.Image) -> str:
    """A caption from measured properties only, a swappable stand-in for a captioning model.

    It says what it measured and nothing it did not: shape and size, mean brightness,
    dominant colors, and frontal faces if OpenCV is installed. The same image always gets
    the same caption. grace_hopper.jpg gets ``"a portrait-oriented 512x600 image, fairly dark
    (mean brightness 77/255), mostly black and light grey, 1 face found (OpenCV Haar cascade)"``
    (her navy uniform is dark enough to count as black).

    OpenCV fits the course's budget, so it is a dependency: its 62 MB wheel
    (opencv-python-headless 4.14) installed in 1.2 s from a local package mirror (plus the
    download), and a caption costs ~50 ms on grace_hopper.jpg with face detection, ~2 ms
    without it (measured on a 2-core cloud VM).
    """
    m = measure(img)
    colors = " and ".join(m.colors)
    return (
        f"a {shape_word(m.width, m.height)} {m.width}x{m.height} image, {brightness_word(m.brightness)}"
        f" (mean brightness {m.brightness:.0f}/255), mostly {colors}, {faces_phrase(m.faces)}"
    )


# --- the pipeline ---------------------------------------------------------------------------

StepResult = list[Rendition] | str | Image.Image
OnStep = Callable[[str, int, int], None]


def run_step(step: str, img: Image.Image, *, work: float = 1.0, caption_fn: Callable[[Image.Image], str] = caption) -> StepResult:
    """One step of ``STEPS`` on a decoded image: "upright" returns an image, "caption" a str, the others renditions."""
    if step == "upright":
        return upright(img)
    if step == "thumbnails":
        return thumbnails(img)
    if step == "filter":
        return [apply_filter(img, work=work)]
    if step == "caption":
        return caption_fn(img)
    raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")


def process_image(
    data: bytes,
    *,
    work: float = 1.0,
    caption_fn: Callable[[Image.Image], str] = caption,
    on_step: OnStep | None = None,
) -> tuple[list[Rendition], str]:
    """Decode (every upload check again), then run ``STEPS``; returns (renditions, caption).

    Synchronous and CPU-bound: call it as ``await asyncio.to_thread(process_image, data)``.
    ``on_step(step, done, total)`` is called after each step, *in the worker thread*: to
    publish progress from it, hand the work to the loop (``loop.call_soon_threadsafe``).
    Raises ``ImageRejected`` for bytes that are not an acceptable image (a permanent failure:
    retrying will not help) and ``ValueError`` for a ``work`` outside 0..MAX_WORK.

    ``work`` buys ``REFINEMENT_STEPS_PER_WORK`` filter passes per unit; everything else is a
    fixed cost. Measured on a 2-core cloud VM (Python 3.11, Pillow 13.0, OpenCV 4.14) with
    grace_hopper.jpg (512x600), medians: work=1.0 0.64 s, work=4 2.37 s, work=10 5.92 s (9.3x),
    work=0 0.09 s. Two calls in two threads finish in ~1.15x the time of one (1.7x throughput).
    """
    refinement_steps(work)  # a bad work value fails before any decoding
    img: Image.Image = decode(data, max_side=WORKING_MAX_SIDE)
    renditions: list[Rendition] = []
    text = ""
    for done, step in enumerate(STEPS, start=1):
        result = run_step(step, img, work=work, caption_fn=caption_fn)
        if isinstance(result, Image.Image):
            result.info[UPLOAD_SIZE_KEY] = upload_size(img)
            img = result
        elif isinstance(result, str):
            text = result
        else:
            renditions.extend(result)
        if on_step is not None:
            on_step(step, done, len(STEPS))
    return renditions, text


# --- sample and hostile inputs, made in memory ----------------------------------------------


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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with a few rows of data (~100 bytes).

    30000x30000 would decode to 2.7 GB; a guard that reads the header refuses it first.
    """
    rows = zlib.compress(b"".join(b"\x00" + bytes(3 * min(width, 256)) for _ in range(4)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


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
