"""Property-based tests (hypothesis): any image or prompt gives a result or a
``FeatherError``, never another exception, within the time and memory bounds stated here.

Bounds: each example must finish in TIME_S seconds and raise the process's peak RSS by at
most PEAK_MB (the pixel buffers of a 336 x 336 crop are ~1.4 MB; the old resize of a
5000 x 1 strip took 5.5 GB)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from feather.errors import FeatherError
from feather.runtime import preprocess
from feather.runtime.preprocess import PromptEncoder, pixel_values

TIME_S = 2.0
PEAK_MB = 200
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


@dataclass
class Spec:
    """The tiny checkpoint's CLIP preprocessing (the manifest's ``ImageSpec`` fields)."""

    size: tuple = (336, 336)
    resize_shortest_edge: int | None = 336
    resample: str = "bicubic"
    center_crop: bool = True
    rescale_factor: float = 1 / 255
    normalize: bool = True
    mean: tuple = (0.481, 0.458, 0.408)
    std: tuple = (0.269, 0.261, 0.276)
    convert_rgb: bool = True


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bounded(call):
    """Run ``call``; a FeatherError is an accepted outcome. Assert time and peak memory."""
    peak, start = _peak_mb(), time.perf_counter()
    try:
        out = call()
    except FeatherError as err:
        assert str(err) and "\n" not in str(err)
        out = None
    assert time.perf_counter() - start < TIME_S
    assert _peak_mb() - peak < PEAK_MB
    return out


sides = st.integers(min_value=0, max_value=6000)
channels = st.sampled_from([None, 1, 3, 4, 2])


@SETTINGS
@given(h=sides, w=sides, c=channels, dtype=st.sampled_from([np.uint8, np.uint8, np.float32, np.int64]))
def test_any_array_gives_pixels_or_a_feather_error(h, w, c, dtype):
    if h * w > 4_000_000:  # the test's own allocation stays small; huge shapes are checked below
        h = max(1, 4_000_000 // max(w, 1))
    shape = (h, w) if c is None else (h, w, c)
    arr = np.full(shape, 7, dtype=dtype)
    out = _bounded(lambda: pixel_values(arr, Spec()))
    if out is not None:
        assert out.shape == (1, 3, 336, 336) and out.dtype == np.float32 and np.isfinite(out).all()


@SETTINGS
@given(h=st.integers(1, 60000), w=st.integers(1, 60000),
       mode=st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "LA", "CMYK"]),
       fmt=st.sampled_from(["PNG", "BMP", "GIF", "TIFF", "JPEG"]))
def test_any_encoded_image_file_gives_pixels_or_a_feather_error(tmp_path_factory, h, w, mode, fmt):
    """A small file may declare a huge or extreme image: 60000 x 1, 1 x 60000, 60000 x 60000
    (a decompression bomb). The header check and the crop-window resize bound the work."""
    if h * w > 16_000_000:
        path = _bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", w, h)
    else:
        if h * w > 400_000:
            h, w = (h, max(1, 400_000 // h)) if h > w else (max(1, 400_000 // w), w)
        try:
            img = Image.new(mode, (w, h), 100)
            path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
            img.save(path, format=fmt)
        except (OSError, ValueError, KeyError):
            return  # a mode this format cannot store: nothing to read
    out = _bounded(lambda: pixel_values(path, Spec()))
    if out is not None:
        assert out.shape == (1, 3, 336, 336)


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_any_bytes_as_an_image_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "x.png"
    path.write_bytes(data)
    assert _bounded(lambda: pixel_values(path, Spec())) is None


@SETTINGS
@given(name=st.one_of(st.text(max_size=400), st.binary(max_size=300)))
def test_any_path_name_gives_a_feather_error(name):
    assert _bounded(lambda: pixel_values(name if isinstance(name, str) else name.decode("latin-1"), Spec())) is None


def _bomb_png(path, width: int, height: int):
    """A PNG header that declares width x height, with one tiny IDAT (no real pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_extreme_aspect_ratio_stays_small_and_matches_the_whole_resize():
    """A 5000 x 1 strip once cost 5.5 GB; now the crop window only. For moderate ratios the
    window path (forced) equals the whole resize within the float32 box rounding."""
    strip = np.tile(np.arange(5000, dtype=np.uint8)[None, :, None], (1, 1, 3))
    assert _bounded(lambda: pixel_values(strip, Spec())).shape == (1, 3, 336, 336)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 1000, 3), dtype=np.uint8)  # resizes to 336 x 8400
    whole = pixel_values(arr, Spec())
    old, preprocess.EXACT_RESIZE_PIXELS = preprocess.EXACT_RESIZE_PIXELS, 0
    try:
        window = pixel_values(arr, Spec())
    finally:
        preprocess.EXACT_RESIZE_PIXELS = old
    levels = np.abs(whole - window) * np.asarray(Spec.std)[:, None, None] * 255
    assert levels.max() <= 2.01 and (levels > 0.5).mean() < 0.01


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    start = time.perf_counter()
    for side, message in [(10000, "10000 x 10000 pixels; at most 67,108,864 pixels (64 MP) accepted"),
                          (50000, "cannot read image (it declares over 67,108,864 pixels, the most accepted)")]:
        path = _bomb_png(tmp_path / f"bomb{side}.png", side, side)
        assert path.stat().st_size < 200
        with pytest.raises(FeatherError) as info:
            pixel_values(path, Spec())
        assert str(info.value) == f"{path}: {message}"
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------- prompts
@pytest.fixture(scope="module")
def encoder(export_feather):
    from feather.manifest import load_manifest

    m = load_manifest(export_feather)
    return PromptEncoder(export_feather / m.tokenizer, m.prompt, max_seq=m.max_seq)


@SETTINGS
@given(prompt=st.one_of(st.text(max_size=3000), st.binary(max_size=50), st.none(), st.integers(),
                        st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=5)))
def test_any_prompt_gives_ids_or_a_feather_error(encoder, prompt):
    out = _bounded(lambda: encoder.encode(prompt))
    if out is not None:
        ids, offset = out
        assert ids.dtype == np.int64 and ids[offset] == encoder.spec.image_token_id


def test_a_huge_prompt_is_refused_before_tokenizing(encoder):
    """4 million characters took 12 s and 885 MB to tokenize before the length check."""
    start = time.perf_counter()
    with pytest.raises(FeatherError, match=r"prompt: 4,000,000 characters; it cannot fit"):
        encoder.encode("w" * 4_000_000)
    assert time.perf_counter() - start < 0.5
    assert encoder.max_chars == 1024 * 11  # max_seq x the tiny vocabulary's longest entry


def test_prompt_type_and_encoding_errors(encoder):
    for prompt, message in [(b"hi", "prompt: expected str, got bytes"), (None, "prompt: expected str, got NoneType"),
                            ("caf\udce9", "prompt: not valid UTF-8 text (byte 0xe9 at character 3)")]:
        with pytest.raises(FeatherError) as info:
            encoder.encode(prompt)
        assert str(info.value) == message


def test_character_bound_is_sound(encoder):
    """No prompt under the bound is refused for length alone; the bound is max_seq times the
    longest vocabulary entry, so a prompt over it needs more than max_seq tokens."""
    longest = max(len(t) for t in encoder.tokenizer.get_vocab(with_added_tokens=True))
    worst = "Ġcoordinate"[1:] * (encoder.max_chars // 10)  # long tokens: the fewest tokens per character
    assert len(encoder.tokenizer.encode(worst).ids) >= len(worst) / longest
