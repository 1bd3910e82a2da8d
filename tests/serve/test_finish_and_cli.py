"""``finish_reason`` follows the runtime's ``Result`` (stop, length, cancelled); bad
``feather-serve`` flags are one line; an undecodable image never leaks an object repr."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import pytest

from tests.serve.conftest import PROMPT, chat_body, data_uri


def test_result_finish_reason(pipe, image_png):
    eos = set(pipe.manifest.tokens.eos)
    stopped = pipe.generate(str(image_png), PROMPT, 300)
    assert stopped.finish_reason == "stop" and stopped.tokens[-1] in eos and len(stopped.tokens) < 300
    capped = pipe.generate(str(image_png), PROMPT, 3)
    assert capped.finish_reason == "length" and len(capped.tokens) == 3
    cancel = threading.Event()
    cancel.set()  # set before the first step: one token, then the loop ends
    cut = pipe.generate(str(image_png), PROMPT, 50, cancel=cancel)
    assert cut.finish_reason == "cancelled" and len(cut.tokens) == 1
    assert cut.to_json()["finish_reason"] == "cancelled"


@pytest.mark.parametrize("stream", [False, True])
def test_api_finish_reason_is_the_results(server, image_png, pipe, stream):
    expected = pipe.generate(str(image_png), PROMPT, 300)
    body = chat_body(data_uri(image_png), max_tokens=300, stream=stream)
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    if stream:
        events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
        final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][-1]
    else:
        final = r.json()
    assert final["choices"][0]["finish_reason"] == "stop" == expected.finish_reason
    assert final["feather"]["tokens"] == expected.tokens


@pytest.mark.parametrize("payload", [b"not a png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\1" * 10, b""])
def test_undecodable_image_names_no_object(server, payload):
    uri = "data:image/png;base64," + base64.b64encode(payload).decode()
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(uri), timeout=30)
    assert r.status_code == 400 and "\n" not in r.text
    message = r.json()["error"]["message"]
    assert message.startswith("image bytes: cannot read image (") and "0x" not in message, message
    assert "BytesIO" not in message and "object at" not in message, message


@pytest.mark.parametrize(("flags", "words"), [
    (["--port", "70000"], "--port: got 70000, expected an integer in 0..65535"),
    (["--port", "-1"], "--port: got -1, expected an integer in 0..65535"),
    (["--port", "http"], "--port: got 'http', expected an integer"),
    (["--max-body-mb", "nan"], "--max-body-mb: got 'nan', expected a finite number"),
    (["--max-body-mb", "inf"], "--max-body-mb: got 'inf', expected a finite number"),
    (["--max-body-mb", "0"], "--max-body-mb: got 0, expected a number > 0 and <= 1024"),
    (["--max-body-mb", "-3"], "--max-body-mb: got -3, expected a number > 0 and <= 1024"),
    (["--max-body-mb", "1e9"], "--max-body-mb: got 1e+09, expected a number > 0 and <= 1024"),
    (["--body-timeout", "0"], "--body-timeout: got 0, expected seconds > 0 and <= 3600"),
    (["--body-timeout", "nan"], "--body-timeout: got 'nan', expected a finite number"),
    (["--max-concurrency", "0"], "--max-concurrency: got 0, expected an integer in 1..1024"),
    (["--max-queue", "-1"], "--max-queue: got -1, expected an integer in 0..1048576"),
    (["--max-image-pixels", "0"], "--max-image-pixels: got 0, expected an integer in 1.."),
    (["--log-level", "loud"], "--log-level: invalid choice: 'loud'"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, flags, words):
    from feather.serve.cli import main

    code = main([str(tmp_path / "no-export"), *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("feather-serve: error: ") and words in err, err


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(server):
    from PIL import Image

    from tests.serve.conftest import png_bytes

    uri = data_uri(png_bytes(Image.new("L", (5000, 4000))), "image/png")  # 20 MP > the default 16.8 MP
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(uri), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large", r.text
    assert "5000 x 4000 pixels" in r.json()["error"]["message"]
