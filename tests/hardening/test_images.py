"""Images from users: every Pillow mode and array dtype loads as the right RGB or is refused in
one line, PIL images in odd states, bytes and file objects (what the server receives), and the
overlay's memory at extreme aspect ratios (measured in a subprocess, peak RSS)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from feather.errors import InputError
from feather.image import ImageTooLargeError, load_image, open_image
from feather.overlay import LEGEND_H, PANEL, TITLE_H

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _one_line_error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- every mode, by property


def _to_lab():
    return ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def _uniform(mode: str, w: int, h: int, v: int, a: int):
    """(image of ``mode``, the RGB every pixel must load as, tolerance in levels); None: refused."""
    rgb = (v, (v * 7) % 256, 255 - v)
    white = tuple(_round(c * a / 255 + 255 * (1 - a / 255)) for c in rgb)
    grey_on_white = _round(v * a / 255 + 255 * (1 - a / 255))
    if mode in ("RGB", "RGBX", "CMYK", "YCbCr", "HSV"):
        # CMYK and YCbCr hold RGB with at most a level of rounding, HSV a few (hue quantised)
        tol = {"RGB": 0, "RGBX": 0, "CMYK": 0, "YCbCr": 2, "HSV": 4}[mode]
        return Image.new("RGB", (w, h), rgb).convert(mode), rgb, tol
    if mode == "LAB":
        muted = tuple(64 + c // 2 for c in rgb)  # inside 8-bit L*a*b*'s gamut (pure blue is not)
        img = ImageCms.applyTransform(Image.new("RGB", (w, h), muted), _to_lab())
        return img, muted, 8  # 8-bit L*a*b* quantises colours by up to 7 levels (dark ones)
    if mode in ("L", "P"):
        grey = Image.new("L", (w, h), v)
        return (grey if mode == "L" else grey.convert("P")), (v, v, v), 0
    if mode == "1":
        bit = 255 if v >= 128 else 0
        return Image.new("1", (w, h), bit), (bit,) * 3, 0
    if mode in ("RGBA", "RGBa"):
        img = Image.new("RGBA", (w, h), rgb + (a,))
        return (img if mode == "RGBA" else img.convert("RGBa")), white, (0 if mode == "RGBA" else 3)
    if mode in ("LA", "La", "PA"):
        img = Image.new("LA", (w, h), (v, a))
        img = img.convert("La") if mode == "La" else img
        if mode == "PA":
            img = Image.merge("PA", (Image.new("L", (w, h), v).convert("P"), Image.new("L", (w, h), a)))
        return img, (grey_on_white,) * 3, (0 if mode != "La" else 3)
    if mode.startswith("I;16"):
        raw = v * 257 + a  # any 16-bit value
        img = Image.frombytes(mode, (w, h), np.full((h, w), raw, ">u2" if mode == "I;16B" else "<u2").tobytes())
        return img, (_round(raw * 255 / 65535),) * 3, 0
    if mode == "I":
        raw = v * 257 + a - 300  # negative or 16-bit
        img = Image.fromarray(np.full((h, w), raw, np.int32))
        return img, (None if raw < 0 else (_round(raw * 255 / 65535),) * 3), 0
    if mode == "F":
        x = (v - 20) / 200  # below 0, in 0..1, above 1
        img = Image.fromarray(np.full((h, w), x, np.float32))
        return img, (None if not 0 <= np.float32(x) <= 1 else (_round(float(np.float32(x)) * 255),) * 3), 0
    raise AssertionError(mode)


MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA",
         "I;16", "I;16B", "I;16L", "I;16N", "I", "F"]


@SETTINGS
@given(mode=st.sampled_from(MODES), w=st.integers(1, 40), h=st.integers(1, 40), v=st.integers(0, 255),
       a=st.integers(0, 255))
def test_every_pillow_mode_loads_as_the_right_rgb_or_is_refused_in_one_line(mode, w, h, v, a):
    img, expected, tol = _uniform(mode, w, h, v, a)
    assert img.mode == mode
    if expected is None:
        message = _one_line_error(lambda: load_image(img))
        assert message.startswith(f"image: mode {mode}: ") and "expected" in message
        return
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (w, h)
    arr = np.asarray(out).astype(int)
    assert np.abs(arr - np.asarray(expected)).max() <= tol, (mode, arr[0, 0], expected)


@pytest.mark.parametrize("bits, top", [(16, 65535), (12, 4095), (10, 1023)])
def test_a_16bit_gradient_png_maps_monotonically_not_to_white(tmp_path, bits, top):
    """A depth camera's 16-bit PNG once loaded all white (clipped at 255). Values are scaled by
    the 16-bit container: full range to 0..255, a 12-bit sensor's to 0..16."""
    ramp = np.linspace(0, top, 500).round().astype(np.uint16)
    path = tmp_path / f"depth{bits}.png"
    Image.fromarray(np.tile(ramp, (7, 1))).save(path)
    assert Image.open(path).mode == "I;16"
    row = np.asarray(load_image(path))[3, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[0] == 0
    assert row[-1] == _round(top * 255 / 65535) and len(np.unique(row)) == row[-1] + 1  # every level in between


def test_lab_is_converted_not_read_as_alpha():
    """LAB's second band is called "A" (a*); it was composited as alpha, turning colours white."""
    red = ImageCms.applyTransform(Image.new("RGB", (4, 4), (200, 30, 30)), _to_lab())
    r, g, b = np.asarray(load_image(red))[0, 0].astype(int)
    assert r > 180 and g < 60 and b < 60


def test_16bit_png_with_transparent_grey_value_composites_it_on_white(tmp_path):
    arr = np.full((4, 6), 1000, np.uint16)
    arr[:, :3] = 40000
    path = tmp_path / "t.png"
    Image.fromarray(arr).save(path, transparency=40000)
    out = np.asarray(load_image(path))
    assert out[:, :3].tolist() == [[[255] * 3] * 3] * 4  # the transparent value: white
    assert out[0, 5].tolist() == [_round(1000 * 255 / 65535)] * 3  # 4


# ---------------------------------------------------------------- arrays of other dtypes


@pytest.mark.parametrize("array, expected", [
    (np.array([[0, 257, 65535]], np.uint16), [0, 1, 255]),
    (np.array([[0, 32767, 32768]], np.uint16), [0, 127, 128]),
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
    (np.array([[0.2, 0.998, 0.001]], np.float64), [51, 254, 0]),
    (np.array([[0.25, 0.75, 1]], np.float16), [64, 191, 255]),
    (np.array([[True, False, True]]), [255, 0, 255]),
])
def test_arrays_of_other_dtypes_convert_by_the_documented_rule(array, expected):
    out = np.asarray(load_image(array))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == expected
    rgb = np.repeat(array[..., None], 3, axis=2)  # H x W x 3 of the same dtype: the same values
    assert np.asarray(load_image(rgb))[0, :, 1].tolist() == expected


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3), np.int64), "image array: dtype int64; expected uint8 (or bool, uint16, float in 0..1)"),
    (np.zeros((2, 3, 3), np.int16), "image array: dtype int16; expected uint8 (or bool, uint16, float in 0..1)"),
    (np.zeros((2, 3), np.complex64), "image array: dtype complex64; expected uint8 (or bool, uint16, float in 0..1)"),
    (np.array([[0.0, 255.0]]), "image array: float values span 0..255; expected 0.0..1.0 (scaled by 255), "
                               "or convert to uint8"),
    (np.array([[-0.5, 1.0]], np.float32), "image array: float values span -0.5..1; expected 0.0..1.0 "
                                          "(scaled by 255), or convert to uint8"),
    (np.array([[np.nan, 0.5]]), "image array: float values span 0.5..0.5, and NaN; expected 0.0..1.0 "
                                "(scaled by 255), or convert to uint8"),
    (np.full((2, 2, 3), np.nan, np.float32), "image array: float values span only NaN; expected 0.0..1.0 "
                                             "(scaled by 255), or convert to uint8"),
])
def test_arrays_without_a_rule_are_refused_in_one_line(array, message):
    assert _one_line_error(lambda: load_image(array)) == message


# ---------------------------------------------------------------- PIL images in odd states, bytes, files


def test_la_image_and_closed_lazy_images(tmp_path):
    la = Image.new("La", (3, 2), (100, 128))  # premultiplied: straight grey 199 at alpha 128/255
    assert np.asarray(load_image(la))[0, 0].tolist() == [_round(199 * 128 / 255 + 255 * 127 / 255)] * 3
    path = tmp_path / "p.png"
    Image.new("RGB", (5, 4), (1, 2, 3)).save(path)
    with Image.open(path) as lazy:  # never loaded; the with closes its file
        pass
    closed = Image.open(path)
    closed.close()
    for img in (lazy, closed):
        message = _one_line_error(lambda img=img: load_image(img))
        assert message.startswith("image: cannot read the PIL image's pixels (") and "pass the path" in message
    opened = Image.open(path)  # still open: loads
    assert np.asarray(load_image(opened))[0, 0].tolist() == [1, 2, 3]


def test_bytes_and_file_objects_load_like_the_path(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (9, 99, 199)).save(buf, "JPEG", exif=exif, quality=95)
    data = buf.getvalue()
    (tmp_path / "r.jpg").write_bytes(data)
    from_path = np.asarray(load_image(tmp_path / "r.jpg"))
    assert from_path.shape == (40, 20, 3)  # transposed
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(np.asarray(load_image(source)), from_path)
    assert _one_line_error(lambda: load_image(b"not an image")).startswith(
        "image bytes: cannot read image (not an image format Pillow can read)")


def test_max_pixels_bound_is_checked_from_the_header_and_has_its_own_type():
    buf = io.BytesIO()
    Image.new("L", (300, 200)).save(buf, "PNG")
    assert open_image(buf.getvalue(), max_pixels=60000).size == (300, 200)
    with pytest.raises(ImageTooLargeError, match=r"^image bytes: 300 x 200 pixels; at most 59,999 pixels"):
        load_image(buf.getvalue(), max_pixels=59999)
    with pytest.raises(ImageTooLargeError, match=r"^image array: 300 x 200 pixels"):
        load_image(np.zeros((200, 300), np.uint8), max_pixels=1000)


def test_unsupported_modes_are_refused_in_one_line():
    for mode in ("I;16S", "BGR;24"):
        try:
            odd = Image.new(mode, (2, 2))
        except (ValueError, KeyError):
            continue  # this Pillow cannot even make one
        assert _one_line_error(lambda odd=odd: load_image(odd)).startswith(f"image: mode {mode} is not supported; ")


# ---------------------------------------------------------------- the overlay at extreme aspect ratios

_OVERLAY_RUN = """
import json, sys
from feather.bench.rows import peak_rss_bytes  # VmHWM: ru_maxrss would carry the pytest parent's peak over exec
from feather.manifest import ImageSpec
from feather.overlay import save_overlay
from PIL import Image
spec = ImageSpec(size=[336, 336], resize_shortest_edge=336, resample="bicubic", center_crop=True,
                 rescale_factor=1 / 255, normalize=True, mean=[0.5] * 3, std=[0.5] * 3)
before = peak_rss_bytes() / 1024
save_overlay(sys.argv[1], [{"layer": 3, "kept": list(range(0, 576, 7))}], spec, 24, "feather", sys.argv[2])
after = peak_rss_bytes() / 1024
print(json.dumps({"before_mb": before / 1024, "after_mb": after / 1024, "size": Image.open(sys.argv[2]).size}))
"""


@pytest.mark.parametrize("width, height", [(5000, 1), (1, 60000), (60000, 1), (1, 5000), (20000, 3), (2, 40000)])
def test_overlay_at_extreme_aspect_ratios_stays_small(tmp_path, width, height):
    """A 99-byte 5000 x 1 PNG once took 3.9 GB in the overlay, 1 x 60000 a MemoryError."""
    src = tmp_path / "strip.png"
    Image.fromarray(np.tile(np.arange(width, dtype=np.uint8), (height, 1))).convert("RGB").save(src)
    out = tmp_path / "o.png"
    proc = subprocess.run([sys.executable, "-c", _OVERLAY_RUN, str(src), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["after_mb"] < 300, report  # the whole process's peak, imports included
    assert report["after_mb"] - report["before_mb"] < 150, report
    assert tuple(report["size"]) == (2 * PANEL, 2 * (PANEL + TITLE_H) + LEGEND_H)
