"""The capstone's image helpers: hostile uploads are refused with the right status, real work is done.

Timing claims are ratios or bounds hundreds of times wider than the measured value (a
decompression bomb is refused in ~1 ms; the test allows 1 s), so a busy 2-core machine passes.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from helpers.capstone import images
from helpers.capstone.images import (
    ACCEPTED_FORMATS,
    EXIF_ROTATED_QUADRANTS,
    EXIF_ROTATED_UPRIGHT_SIZE,
    FILTER_NAME,
    MAX_UPLOAD_BYTES,
    STEPS,
    ImageRejected,
    Rendition,
    apply_filter,
    caption,
    color_name,
    corrupt_png,
    decompression_bomb,
    exif_rotated_jpeg,
    generated_image,
    inspect_upload,
    measure,
    not_an_image,
    open_upright,
    process_image,
    refinement_steps,
    sample_photo,
    thumbnails,
    truncated_jpeg,
)
from helpers.core.problems import PROBLEM_BASE

ROOT = Path(__file__).resolve().parents[1]


def opencv_installed() -> bool:
    try:
        import cv2  # noqa: F401 - only asking whether it imports
    except ImportError:
        return False
    return True


def rejected(data: bytes, **limits: int) -> ImageRejected:
    """The ImageRejected that inspect_upload raises for ``data`` (fails the test if it accepts it)."""
    with pytest.raises(ImageRejected) as caught:
        inspect_upload(data, **limits)
    return caught.value


def decoded(rendition: Rendition) -> Image.Image:
    img = Image.open(io.BytesIO(rendition.data))
    img.load()
    return img


# --- accepted uploads ---------------------------------------------------------------------


def test_the_sample_photo_is_a_jpeg_portrait_with_no_orientation() -> None:
    info = inspect_upload(sample_photo())
    assert (info.format, info.width, info.height, info.orientation) == ("JPEG", 512, 600, 1)
    assert info.content_type == "image/jpeg"


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_every_accepted_format_is_accepted_and_sniffed_from_the_bytes(fmt: str) -> None:
    info = inspect_upload(generated_image(3, (320, 240), fmt))
    assert (info.format, info.width, info.height) == (fmt, 320, 240)
    assert info.content_type == images.CONTENT_TYPES[fmt]


def test_a_multi_picture_jpeg_from_a_camera_is_a_jpeg() -> None:
    """Pillow calls a JPEG with extra pictures (MPO, common from cameras) "MPO"; it is stored as image/jpeg."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(out, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), "blue")])
    info = inspect_upload(out.getvalue())
    assert (info.format, info.content_type, info.width) == ("JPEG", "image/jpeg", 64)
    red, green, blue = open_upright(out.getvalue()).getpixel((0, 0))  # type: ignore[misc]  # an RGB pixel is a 3-tuple
    assert red > 200, "the first picture (red), not the second"
    assert green < 40, "the first picture (red), not the second"
    assert blue < 40, "the first picture (red), not the second"


def test_generated_images_repeat_for_a_seed_and_differ_between_seeds() -> None:
    assert generated_image(7) == generated_image(7)
    assert generated_image(7) != generated_image(8)
    assert Image.open(io.BytesIO(generated_image(7, (123, 45)))).size == (123, 45)


# --- hostile uploads ----------------------------------------------------------------------

HOSTILE: dict[str, tuple[Callable[[], bytes], int]] = {
    "empty": (lambda: b"", 400),
    "one byte over the limit": (lambda: b"\xff\xd8\xff" + bytes(MAX_UPLOAD_BYTES - 2), 413),
    "text": (not_an_image, 415),
    # JPEG's magic bytes make it a JPEG to the sniffer; the text after them makes it a broken one
    "text after JPEG magic bytes": (lambda: b"\xff\xd8\xff\xe0" + not_an_image() * 20, 422),
    "PDF": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415),
    "SVG": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415),
    "GIF (an image, not an accepted format)": (lambda: generated_image(1, (40, 30), "GIF"), 415),
    "truncated JPEG": (truncated_jpeg, 422),
    "JPEG cut inside its header": (lambda: sample_photo()[:200], 422),
    "corrupt PNG": (corrupt_png, 422),
    "bomb 30000x30000 (Pillow's error)": (decompression_bomb, 413),
    "bomb 10000x10000 (Pillow's warning, made an error)": (lambda: decompression_bomb(10_000, 10_000), 413),
    "bomb 8000x6000 (the course's own budget)": (lambda: decompression_bomb(8000, 6000), 413),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_upload_is_refused_with_its_status_and_a_one_sentence_problem(name: str) -> None:
    make, status = HOSTILE[name]
    error = rejected(make())
    assert error.status == status, f"{name}: {error.detail}"
    assert error.type.startswith(PROBLEM_BASE)
    assert error.title
    assert error.detail.endswith("."), f"not one sentence: {error.detail!r}"
    assert ". " not in error.detail.rstrip("."), f"not one sentence: {error.detail!r}"
    assert " at 0x" not in error.detail, "no object addresses from Pillow's messages"


def test_a_text_file_named_jpg_and_sent_as_image_jpeg_is_still_415() -> None:
    """There is no way to hand inspect_upload a file name or a Content-Type: only the bytes count."""
    assert set(inspect.signature(inspect_upload).parameters) == {"data", "max_bytes", "max_pixels"}
    error = rejected(not_an_image())
    assert error.status == 415
    assert "never from the name or Content-Type" in error.detail


def test_byte_and_pixel_limits_are_parameters() -> None:
    photo = sample_photo()
    assert rejected(photo, max_bytes=len(photo) - 1).status == 413
    assert inspect_upload(photo, max_bytes=len(photo)).width == 512
    assert rejected(photo, max_pixels=512 * 600 - 1).status == 413
    assert inspect_upload(photo, max_pixels=512 * 600).height == 600


def test_the_byte_limit_is_checked_before_pillow_looks() -> None:
    """A huge non-image is 413 (too big), not 415: the size check costs nothing, so it comes first."""
    assert rejected(b"x" * (MAX_UPLOAD_BYTES + 1)).status == 413


@pytest.mark.parametrize("size", [(30_000, 30_000), (10_000, 10_000), (8000, 6000)])
def test_a_decompression_bomb_is_refused_from_its_header_quickly_and_in_little_memory(size: tuple[int, int]) -> None:
    resource = pytest.importorskip("resource")  # Unix only: the peak resident set size
    bomb = decompression_bomb(*size)
    assert len(bomb) < 1000, "the bomb is a small file"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    error = rejected(bomb)
    elapsed = time.perf_counter() - started
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before  # KiB on Linux
    assert error.status == 413
    assert elapsed < 1.0, f"refusing a bomb took {elapsed:.2f} s: it was decoded"
    assert grown_kib < 100 * 1024, f"the peak memory grew by {grown_kib / 1024:.0f} MiB: the bomb was decoded"


def test_the_budget_holds_even_with_pillows_own_guard_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    error = rejected(decompression_bomb())
    assert error.status == 413
    assert "30000x30000" in error.detail


def test_turning_the_bomb_warning_into_an_error_leaves_the_warning_filters_as_they_were() -> None:
    before = list(warnings.filters)
    rejected(decompression_bomb(10_000, 10_000))
    assert warnings.filters == before


def test_loading_truncated_images_switched_on_elsewhere_is_a_loud_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        inspect_upload(truncated_jpeg())


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        ((images.MAX_SIDE, 10), False),  # 1000:1
        ((1000, 100), True),  # exactly MAX_ASPECT_RATIO
        ((1001, 100), False),
        ((100, 1001), False),
        ((images.MAX_SIDE, images.MAX_SIDE // 10), True),  # the longest side at the steepest ratio
        ((images.MAX_SIDE + 1, 1001), False),
    ],
)
def test_sides_and_their_ratio_are_capped_before_decoding(size: tuple[int, int], accepted: bool) -> None:
    data = generated_image(1, size, "PNG") if accepted else decompression_bomb(*size)
    if accepted:
        assert inspect_upload(data).width == size[0]
        return
    error = rejected(data)
    assert (error.status, error.type) == (413, PROBLEM_BASE + "image-shape")
    assert f"{size[0]}x{size[1]}" in error.detail
    assert "before decoding" in error.detail


def test_webp_has_a_lower_pixel_budget_than_the_other_formats() -> None:
    budget = images.MAX_PIXELS_BY_FORMAT["WEBP"]
    assert budget < images.MAX_PIXELS
    side = math.isqrt(budget) + 1  # just over WebP's budget, far under the others'
    png = generated_image(2, (side, side), "PNG")
    assert inspect_upload(png).width == side
    error = rejected(_webp_of(side))
    assert error.status == 413
    assert "limit for WEBP" in error.detail


def _webp_of(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (20, 40, 60)).save(out, "WEBP", quality=1, method=0)
    return out.getvalue()


def test_a_large_upload_is_processed_on_a_smaller_copy_and_the_caption_keeps_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "WORKING_MAX_SIDE", 160)
    for fmt in ("JPEG", "PNG"):  # JPEG: decoded at a reduced scale (draft); PNG: shrunk after decoding
        data = generated_image(4, (900, 300), fmt)
        working = images.decode(data, max_side=160)
        assert max(working.size) <= 160
        assert working.info[images.UPLOAD_SIZE_KEY] == (900, 300)
        renditions, text = process_image(data, work=0.1)
        assert "900x300" in text, text
        assert {r.name for r in renditions} >= {"thumb-128", FILTER_NAME}


def test_an_exif_rotated_upload_worked_on_as_a_smaller_copy_keeps_its_upright_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "WORKING_MAX_SIDE", 100)
    _, text = process_image(exif_rotated_jpeg(), work=0)
    width, height = EXIF_ROTATED_UPRIGHT_SIZE
    assert f"landscape-oriented {width}x{height} image" in text, text


# --- processing ---------------------------------------------------------------------------


def test_an_exif_rotated_photo_comes_out_upright() -> None:
    data = exif_rotated_jpeg()
    info = inspect_upload(data)
    width, height = EXIF_ROTATED_UPRIGHT_SIZE
    assert (info.width, info.height, info.orientation) == (height, width, 6), "stored sideways, tagged 6"
    assert info.upright_size == EXIF_ROTATED_UPRIGHT_SIZE
    img = open_upright(data)
    assert img.size == EXIF_ROTATED_UPRIGHT_SIZE
    assert img.mode == "RGB"
    centers = {
        "top-left": (width // 4, height // 4),
        "top-right": (3 * width // 4, height // 4),
        "bottom-left": (width // 4, 3 * height // 4),
        "bottom-right": (3 * width // 4, 3 * height // 4),
    }
    for corner, xy in centers.items():
        pixel = img.getpixel(xy)
        assert isinstance(pixel, tuple)
        expected = EXIF_ROTATED_QUADRANTS[corner]
        assert all(abs(got - want) < 40 for got, want in zip(pixel, expected, strict=True)), f"{corner}: {pixel} != {expected}"


def test_transparent_and_16_bit_pngs_become_plain_rgb() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(out, "PNG")
    assert open_upright(out.getvalue()).getpixel((0, 0)) == (255, 255, 255), "transparent is white"
    grey16 = Image.new("I;16", (8, 8))
    grey16.paste(65535, (0, 0, 4, 8))
    out = io.BytesIO()
    grey16.save(out, "PNG")
    img = open_upright(out.getvalue())
    assert (img.mode, img.getpixel((0, 0)), img.getpixel((7, 0))) == ("RGB", (255, 255, 255), (0, 0, 0))


def test_thumbnails_fit_their_box_keep_the_aspect_and_never_enlarge() -> None:
    img = open_upright(sample_photo())  # 512x600
    thumbs = thumbnails(img)
    assert [t.name for t in thumbs] == ["thumb-128", "thumb-512", "thumb-1024"]
    sizes = {t.name: decoded(t).size for t in thumbs}
    assert sizes == {"thumb-128": (109, 128), "thumb-512": (437, 512), "thumb-1024": (512, 600)}
    assert all(t.content_type == "image/jpeg" and decoded(t).format == "JPEG" for t in thumbs)


def test_thumbnail_sizes_must_be_positive_pixels() -> None:
    with pytest.raises(ValueError, match="positive integers"):
        thumbnails(open_upright(sample_photo()), sizes=(0,))


def test_the_filter_output_decodes_and_changes_the_picture() -> None:
    img = open_upright(sample_photo())
    result = apply_filter(img, work=0.5)
    out = decoded(result)
    assert (result.name, result.content_type, out.format) == (FILTER_NAME, "image/jpeg", "JPEG")
    assert max(out.size) <= 1024
    assert abs(out.width / out.height - img.width / img.height) < 0.01
    original = img.resize(out.size)
    difference = sum(abs(a - b) for a, b in zip(out.tobytes(), original.tobytes(), strict=True)) / len(out.tobytes())
    assert difference > 5, f"the filter barely changed the picture (mean difference {difference:.1f}/255)"


def test_more_work_means_proportionally_more_filter_passes() -> None:
    assert refinement_steps(10) == 10 * refinement_steps(1) > 0
    assert refinement_steps(0) == 0


@pytest.mark.parametrize("work", [-1, math.nan, math.inf, images.MAX_WORK + 1, True, "1"])
def test_a_bad_work_value_is_refused_before_any_decoding(work: object) -> None:
    with pytest.raises(ValueError, match="work is a number"):
        process_image(not_an_image(), work=work)  # type: ignore[arg-type]  # wrong types on purpose


def test_process_image_makes_every_rendition_and_reports_each_step() -> None:
    steps: list[tuple[str, int, int]] = []
    renditions, text = process_image(sample_photo(), work=0.25, on_step=lambda *step: steps.append(step))
    assert [r.name for r in renditions] == ["thumb-128", "thumb-512", "thumb-1024", FILTER_NAME]
    assert all(decoded(r).format == "JPEG" for r in renditions)
    assert text == caption(open_upright(sample_photo()))
    assert steps == [(step, done, len(STEPS)) for done, step in enumerate(STEPS, start=1)]


async def test_process_image_in_worker_threads_gives_the_same_results_as_in_one() -> None:
    """The processor runs it with asyncio.to_thread, several at once: no shared state may leak between calls."""
    inputs = [sample_photo(), generated_image(1), exif_rotated_jpeg(), sample_photo()]
    alone = [process_image(data, work=0) for data in inputs]
    together = await asyncio.gather(*(asyncio.to_thread(process_image, data, work=0) for data in inputs))
    assert together == alone


def test_process_image_uses_the_caption_function_it_is_given() -> None:
    _, text = process_image(generated_image(2), work=0, caption_fn=lambda img: f"{img.width} wide")
    assert text == "800 wide"


def test_process_image_refuses_hostile_bytes_too() -> None:
    """The processor decodes stored bytes with every upload check: storage is not a proof of safety."""
    with pytest.raises(ImageRejected) as caught:
        process_image(decompression_bomb())
    assert caught.value.status == 413


def test_work_scales_the_cost_of_process_image() -> None:
    """work=2 costs several times work=0.5 (measured ~3.5x; fixed costs keep it under 4x).
    Half the work of 1 vs 4 gives the same ratio at half the test's time."""
    photo = sample_photo()
    process_image(photo, work=0)  # warm up: OpenCV's import and the cascade load are one-off costs

    def seconds(work: float) -> float:
        started = time.perf_counter()
        process_image(photo, work=work)
        return time.perf_counter() - started

    one = min(seconds(0.5), seconds(0.5))
    four = seconds(2)
    assert four >= 2 * one, f"work=2 took {four:.2f} s, work=0.5 {one:.2f} s: expected at least 2x"


# --- caption ------------------------------------------------------------------------------


def test_the_caption_is_deterministic_and_says_what_it_measured() -> None:
    img = open_upright(sample_photo())
    text = caption(img)
    assert text == caption(open_upright(sample_photo())), "same image, same caption"
    m = measure(img)
    assert text.startswith("a portrait-oriented 512x600 image, ")
    assert f"(mean brightness {m.brightness:.0f}/255)" in text
    assert "mostly " + " and ".join(m.colors) in text
    if opencv_installed():
        assert text.endswith("1 face found (OpenCV Haar cascade)")
    else:
        assert text.endswith("faces not checked (OpenCV is not installed)")


def test_a_generated_landscape_has_no_face_and_a_square_says_so() -> None:
    landscape = caption(open_upright(generated_image(5)))
    assert landscape.startswith("a landscape-oriented 800x600 image, ")
    assert landscape.endswith("no faces found (OpenCV Haar cascade)" if opencv_installed() else "(OpenCV is not installed)")
    assert caption(open_upright(generated_image(5, (300, 300)))).startswith("a square 300x300 image, ")


def test_without_opencv_the_caption_says_faces_were_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # importing cv2 now raises ImportError
    text = caption(open_upright(sample_photo()))
    assert text.endswith("faces not checked (OpenCV is not installed)")


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((0, 0, 0), "black"),
        ((255, 255, 255), "white"),
        ((128, 128, 128), "grey"),
        ((20, 30, 90), "dark blue"),
        ((210, 30, 30), "red"),
        ((120, 60, 20), "brown"),
        ((40, 180, 60), "green"),
    ],
)
def test_color_names(rgb: tuple[int, int, int], name: str) -> None:
    assert color_name(rgb) == name


def test_importing_the_package_pulls_no_heavy_library_and_images_does_not_import_opencv() -> None:
    code = (
        "import sys\n"
        "import helpers.capstone\n"
        "heavy = [m for m in ('PIL', 'aiohttp', 'cv2', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import helpers.capstone.images\n"
        "assert 'cv2' not in sys.modules, 'OpenCV is imported only when a caption looks for faces'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
