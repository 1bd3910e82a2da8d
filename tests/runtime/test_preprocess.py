"""feather.runtime.preprocess against the tiny checkpoint's own LlavaProcessor.

Every comparison runs HF transformers on the same input: the runtime must give the same
input ids and the same pixel values (bit-identical in practice; asserted within 1e-5).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import transformers
from PIL import Image

from feather.errors import InputError, ManifestError, ModelError
from feather.hf.processor import image_spec_from_processor, prompt_spec_from_processor, resample_name
from feather.runtime.preprocess import PromptEncoder, load_image, pixel_values
from feather.tiny import sample_image

N_IMAGE = 576  # (336 / 14) ** 2 patches; the CLS token is dropped by the "default" strategy
ATOL = 1e-5
TEMPLATE_TEXT = "USER: <image>\nWhat is this? ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
PROMPTS = [
    "What is in the image?",
    " leading and trailing spaces ",
    "Décris l'image — où est le chat? 日本語のテキスト 🤖👍",
    "Punctuation: a,b;c!?(x)[y]{z} {prompt} 'q' \"dq\" 50% & <b>tags</b>\ttab\nnew line",
    "Is there a red cup on the table? " * 60,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from feather.tiny import build

    return build(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def processor(tiny):
    return transformers.AutoProcessor.from_pretrained(tiny)


@pytest.fixture(scope="module")
def image_spec(processor):
    return image_spec_from_processor(processor.image_processor)


@pytest.fixture(scope="module")
def prompt_spec(processor):
    return prompt_spec_from_processor(processor, N_IMAGE, processor.image_token_id)


@pytest.fixture(scope="module")
def encoder(tiny, prompt_spec):
    return PromptEncoder(tiny / "tokenizer.json", prompt_spec)


def hf_pixels(processor, image) -> np.ndarray:
    """What LlavaProcessor gives for ``image`` with a one-image prompt: [1, 3, 336, 336]."""
    return processor(text=TEMPLATE_TEXT, images=image, return_tensors="np")["pixel_values"]


def assert_pixels(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


# ---------------------------------------------------------------- export side: the specs


def test_specs_read_from_tiny_processor(image_spec, prompt_spec, processor):
    assert image_spec.size == [336, 336] and image_spec.resize_shortest_edge == 336
    assert image_spec.resample == "bicubic" and image_spec.center_crop and image_spec.normalize
    assert image_spec.rescale_factor == pytest.approx(1 / 255)
    assert image_spec.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert image_spec.std == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert image_spec.convert_rgb is True
    assert prompt_spec.template == "USER: <image>\n{prompt} ASSISTANT:"
    assert (prompt_spec.image_token, prompt_spec.image_token_id) == ("<image>", processor.image_token_id)
    assert prompt_spec.n_image_tokens == N_IMAGE


@pytest.mark.parametrize(
    "value, name",
    [
        (None, "bilinear"),
        (0, "nearest"),
        (2, "bilinear"),
        (3, "bicubic"),
        (Image.Resampling.LANCZOS, "lanczos"),
        (Image.Resampling.BOX, "box"),
        (5, "hamming"),
    ],
)
def test_resample_names(value, name):
    assert resample_name(value) == name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"do_pad": True}, "do_pad"),
        ({"do_resize": False}, "do_resize"),
        ({"size": {"shortest_edge": 336, "longest_edge": 500}}, "size"),
        ({"do_center_crop": False}, "crop_size"),
        ({"size": {"height": 300, "width": 300}}, "crop_size"),
        ({"resample": "bicubic"}, "resample"),
        ({"resample": 7}, "resample"),
    ],
)
def test_image_spec_refuses_what_runtime_cannot_reproduce(kwargs, field):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(**kwargs)
    with pytest.raises(ModelError, match=f"image_processor.{field}"):
        image_spec_from_processor(ip)


def test_image_spec_refuses_other_processor_types():
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    with pytest.raises(ModelError, match="ViTImageProcessorPil is not supported"):
        image_spec_from_processor(ViTImageProcessorPil())


# ---------------------------------------------------------------- pixel values


def _rgba():
    img = sample_image().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 400).astype(np.uint8), (300, 1))
    img.putalpha(Image.fromarray(alpha))
    return img


def _palette_transparent():
    img = sample_image().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    return img


def _camera(channels=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, channels), dtype=np.uint8)


IMAGES = {
    "sample": sample_image,
    "rgba": _rgba,
    "la": lambda: _rgba().convert("LA"),
    "grey": lambda: sample_image().convert("L"),
    "palette": lambda: sample_image().convert("P"),
    "palette_transparent": _palette_transparent,
    "cmyk": lambda: sample_image().convert("CMYK"),
    "camera_hwc": _camera,
    "camera_bgr_view": lambda: _camera()[:, ::-1, ::-1],  # a non-contiguous view
    "camera_rgba": lambda: _camera(4),
    "337x1001": lambda: sample_image().resize((337, 1001)),
    "17x23": lambda: sample_image().resize((17, 23)),
    "1000x336": lambda: sample_image().resize((1000, 336)),
    "336x1000": lambda: sample_image().resize((336, 1000)),
    "336x336": lambda: sample_image().resize((336, 336)),
    "5x2000": lambda: sample_image().resize((5, 2000)),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_pixel_values_match_processor(name, processor, image_spec):
    image = IMAGES[name]()
    assert_pixels(pixel_values(image, image_spec), hf_pixels(processor, image))


def test_pixel_values_bit_identical_on_sample(processor, image_spec):
    np.testing.assert_array_equal(
        pixel_values(sample_image(), image_spec), hf_pixels(processor, sample_image())
    )


@pytest.mark.parametrize("shape", [(300, 400), (300, 400, 1)])
def test_grey_arrays_match_processor_on_L_image(shape, processor, image_spec):
    arr = np.asarray(sample_image().convert("L")).reshape(shape)
    ref = hf_pixels(processor, Image.fromarray(arr.reshape(300, 400)))  # transformers refuses 2-D arrays
    assert_pixels(pixel_values(arr, image_spec), ref)


def test_png_path_matches_processor(tmp_path, processor, image_spec):
    path = tmp_path / "sample.png"
    sample_image().save(path)
    ref = hf_pixels(processor, str(path))
    assert_pixels(pixel_values(str(path), image_spec), ref)
    assert_pixels(pixel_values(path, image_spec), ref)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(sample_image()))


def test_exif_rotated_jpeg_is_transposed_like_processor(tmp_path, processor, image_spec):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    sample_image().save(path, exif=exif, quality=95)
    assert load_image(path).size == (300, 400)
    assert_pixels(pixel_values(path, image_spec), hf_pixels(processor, str(path)))


def test_transparent_png_path_composites_on_white(tmp_path, processor, image_spec):
    # transformers' own path loader drops alpha (.convert("RGB")) while its PIL branch composites
    # on white; we composite for every input so that a path and its opened image agree.
    path = tmp_path / "rgba.png"
    _rgba().save(path)
    with Image.open(path) as opened:
        assert_pixels(pixel_values(path, image_spec), hf_pixels(processor, opened))
    assert load_image(path).getpixel((0, 150)) == (255, 255, 255)  # alpha 0 column


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resample": 2},
        {"resample": Image.Resampling.NEAREST},
        {"resample": 1},
        {"size": {"shortest_edge": 300}, "crop_size": {"height": 320, "width": 336}},  # crop pads
        {"size": {"shortest_edge": 350}, "crop_size": {"height": 225, "width": 301}},  # odd crop
        {"size": {"height": 224, "width": 224}, "do_center_crop": False},  # SigLIP-style resize
        {"do_convert_rgb": None, "do_normalize": False},
        {"do_rescale": False, "image_mean": [127.5] * 3, "image_std": [60.0] * 3},
    ],
)
@pytest.mark.parametrize("name", ["sample", "17x23", "1000x336"])
def test_other_processor_settings(kwargs, name):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(**{"size": {"shortest_edge": 336}, "crop_size": 336, **kwargs})
    image = IMAGES[name]()
    ref = ip(image, return_tensors="np")["pixel_values"]
    ours = pixel_values(image, image_spec_from_processor(ip))
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def test_convert_rgb_off_refuses_non_rgb(image_spec):
    spec = replace(image_spec, convert_rgb=False)
    assert pixel_values(sample_image(), spec).shape == (1, 3, 336, 336)
    with pytest.raises(InputError, match="image: mode L; .* RGB images only"):
        pixel_values(sample_image().convert("L"), spec)


# ---------------------------------------------------------------- image errors


def test_image_errors(tmp_path):
    with pytest.raises(InputError, match=r"^.*missing\.png: no such file$"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.png: cannot read image \(not an image format Pillow can read\)$"):
        load_image(tmp_path / "notes.png")
    buf = tmp_path / "cut.png"
    sample_image().save(buf)
    (tmp_path / "truncated.png").write_bytes(buf.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"truncated\.png: cannot read image \(OSError: "):
        load_image(tmp_path / "truncated.png")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 3), np.int64), "image array: dtype int64; expected uint8 (or bool, uint16, float in 0..1)"),
        (np.zeros((2, 3, 2)), "image array: expected uint8 H x W x 3, got float64 (2, 3, 2)"),
        (np.zeros((4, 5, 2), np.uint8), "image array: expected uint8 H x W x 3, got uint8 (4, 5, 2)"),
        (np.zeros((2, 4, 5, 3), np.uint8), "image array: expected uint8 H x W x 3, got uint8 (2, 4, 5, 3)"),
        (np.zeros((0, 5, 3), np.uint8), "image array: zero size (5 x 0); expected a non-empty image"),
    ],
)
def test_array_errors(array, message):
    with pytest.raises(InputError) as info:
        load_image(array)
    assert str(info.value) == message


def test_zero_size_and_wrong_type_errors():
    with pytest.raises(InputError, match=r"^image: zero size \(0 x 0\)"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(
        InputError, match="^image: expected a path, image bytes, a file object, a PIL image or a numpy array, got int$"
    ):
        load_image(3)


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "spaces", "unicode", "punctuation", "long"])
def test_input_ids_match_processor(prompt, encoder, processor, prompt_spec):
    ids, offset = encoder.encode(prompt)
    text = prompt_spec.template.replace("{prompt}", prompt)
    ref = processor(text=text, images=sample_image(), return_tensors="np")["input_ids"][0]
    assert ids.dtype == np.int64 and ids.ndim == 1
    np.testing.assert_array_equal(ids, ref)
    image_id = processor.image_token_id
    assert ids[offset - 1] != image_id and (ids[offset : offset + N_IMAGE] == image_id).all()
    assert (ids == image_id).sum() == N_IMAGE
    assert encoder.decode(ids) == processor.tokenizer.decode(ref.tolist(), skip_special_tokens=True)


def test_chat_template_branch(tiny, prompt_spec):
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    processor.chat_template = CHAT_TEMPLATE
    spec = prompt_spec_from_processor(processor, N_IMAGE, processor.image_token_id)
    assert spec.template == "USER: <image>\n{prompt}\nASSISTANT:"
    encoder = PromptEncoder(tiny / "tokenizer.json", spec)
    for prompt in PROMPTS[:3]:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        ref = processor(text=text, images=sample_image(), return_tensors="np")["input_ids"][0]
        np.testing.assert_array_equal(encoder.encode(prompt)[0], ref)


def test_chat_template_without_image_is_refused(tiny):
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    processor.chat_template = "{% for m in messages %}{{ m['content'][1]['text'] }}{% endfor %}"
    with pytest.raises(ModelError, match="processor.chat_template"):
        prompt_spec_from_processor(processor, N_IMAGE, processor.image_token_id)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "prompt: empty; expected a question about the image"),
        ("  \n\t", "prompt: empty; expected a question about the image"),
        (
            "look: <image> here",
            "prompt: contains '<image>'; the template already places the one image this model takes",
        ),
    ],
)
def test_prompt_errors(prompt, message, encoder):
    with pytest.raises(InputError) as info:
        encoder.encode(prompt)
    assert str(info.value) == message


def test_tokenizer_errors(tmp_path, tiny, prompt_spec):
    with pytest.raises(ManifestError, match="no such file"):
        PromptEncoder(tmp_path / "tokenizer.json", prompt_spec)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"bad\.json: cannot read tokenizer"):
        PromptEncoder(tmp_path / "bad.json", prompt_spec)
    with pytest.raises(ManifestError, match="prompt.image_token_id: expected '<image>' to be id 7"):
        PromptEncoder(tiny / "tokenizer.json", replace(prompt_spec, image_token_id=7))


def test_saved_truncation_is_ignored_like_transformers(tmp_path, tiny, prompt_spec, encoder):
    import json

    config = json.loads((tiny / "tokenizer.json").read_text())
    config["truncation"] = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    ids, _ = PromptEncoder(tmp_path / "tokenizer.json", prompt_spec).encode("What is this?")
    np.testing.assert_array_equal(ids, encoder.encode("What is this?")[0])


# ---------------------------------------------------------------- import hygiene


def test_runtime_preprocess_imports_without_torch_or_transformers():
    code = (
        "import sys, feather.runtime.preprocess\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
