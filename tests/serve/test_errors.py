"""Bad requests get the right 4xx and one line of JSON; --api-key; 429 when full; 500 for
internal failures."""

from __future__ import annotations

import base64
import json
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import ThreadServer, chat_body, data_uri


def _one_line_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    text = r.text
    assert "\n" not in text and "Traceback" not in text
    err = json.loads(text)["error"]
    for word in words:
        assert word in err["message"], err
    return err


def _content(*parts) -> dict:
    return {"model": "feather", "messages": [{"role": "user", "content": list(parts)}], "max_tokens": 2}


TEXT = {"type": "text", "text": "What is this?"}


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


BAD = {
    "no image": (lambda uri: {"model": "feather", "messages": [{"role": "user", "content": "hi"}]}, 400, "no image"),
    "two images": (lambda uri: _content(TEXT, _image(uri), _image(uri)), 400, "2 images"),
    "image URL": (lambda uri: _content(TEXT, _image("https://example.com/cat.jpg")), 400, "never fetches URLs"),
    "file path": (lambda uri: _content(TEXT, _image("/etc/hostname")), 400, "not a data URI"),
    "file URI": (lambda uri: _content(TEXT, _image("file:///etc/hostname")), 400, "not a data URI"),
    "non-image data URI": (lambda uri: _content(TEXT, _image("data:text/plain;base64,aGVsbG8=")), 400, "image/*"),
    "undecodable image": (lambda uri: _content(TEXT, _image("data:image/png;base64,"
                                                             + base64.b64encode(b"not a png").decode())),
                          400, "image bytes: cannot read image (not an image format Pillow can read)"),
    "bad base64": (lambda uri: _content(TEXT, _image("data:image/png;base64,***")), 400, "base64"),
    "max_tokens string": (lambda uri: chat_body(uri, max_tokens="ten"), 400, "max_tokens"),
    "max_tokens zero": (lambda uri: chat_body(uri, max_tokens=0), 400, "max_tokens"),
    "max_tokens past max_seq": (lambda uri: chat_body(uri, max_tokens=100_000), 400, "max_seq"),
    "temperature string": (lambda uri: chat_body(uri, temperature="hot"), 400, "temperature"),
    "top_p zero": (lambda uri: chat_body(uri, top_p=0), 400, "top_p"),
    "seed float": (lambda uri: chat_body(uri, seed=1.5), 400, "seed"),
    "stream string": (lambda uri: chat_body(uri, stream="yes"), 400, "stream"),
    "messages object": (lambda uri: {"model": "feather", "messages": {"role": "user"}}, 400, "messages"),
    "content number": (lambda uri: {"messages": [{"role": "user", "content": 7}]}, 400, "content"),
    "system turn": (lambda uri: {"messages": [{"role": "system", "content": "x"}, _content(TEXT)["messages"][0]]},
                    400, "role"),
    "n = 2": (lambda uri: chat_body(uri, n=2), 400, "n:"),
    "body is a list": (lambda uri: [1, 2], 400, "JSON object"),
    "unknown model": (lambda uri: {**chat_body(uri), "model": "gpt-4o"}, 404, "gpt-4o"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request(server, image_png, case):
    make, status, word = BAD[case]
    r = httpx.post(f"{server.url}/v1/chat/completions", json=make(data_uri(image_png)), timeout=30)
    _one_line_error(r, status, word)


def test_bad_bodies(server):
    url = f"{server.url}/v1/chat/completions"
    _one_line_error(httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "JSON")
    _one_line_error(httpx.post(url, content=b"{}", headers={"Content-Type": "text/plain"}), 415, "Content-Type")
    huge = json.dumps({"messages": [], "pad": "x" * (2 * 2**20)}).encode()  # the test server allows 1 MiB
    _one_line_error(httpx.post(url, content=huge, headers={"Content-Type": "application/json"}, timeout=30),
                    413, "limit")

    def chunked():  # no Content-Length: the limit applies while reading
        for _ in range(40):
            yield b" " * 2**16

    _one_line_error(httpx.post(url, content=chunked(), headers={"Content-Type": "application/json"}, timeout=30),
                    413, "limit")
    _one_line_error(httpx.get(url), 405)
    _one_line_error(httpx.get(f"{server.url}/v1/nothing"), 404, "/v1/nothing")


def test_api_key_and_busy(pipe, image_png):
    from openai import AuthenticationError, OpenAI

    from feather.serve.app import create_app

    app = create_app(pipe, "feather", max_concurrency=1, max_queue=0, api_key="sekret")
    with ThreadServer(app) as srv:
        url = f"{srv.url}/v1/chat/completions"
        body = chat_body(data_uri(image_png), max_tokens=2)
        err = _one_line_error(httpx.post(url, json=body), 401, "API key")
        assert err["type"] == "authentication_error"
        _one_line_error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
        _one_line_error(httpx.get(f"{srv.url}/v1/models"), 401)
        assert httpx.get(f"{srv.url}/health").status_code == 200  # open: for load balancers' probes
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = {"Authorization": "Bearer sekret"}
        r = httpx.post(url, json=body, headers=good, timeout=60)
        assert r.status_code == 200 and len(r.json()["feather"]["tokens"]) == 2

        # one slot and no queue: of 3 requests sent at once, one runs and the others get 429
        slow = chat_body(data_uri(image_png), max_tokens=40)
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda _: httpx.post(url, json=slow, headers=good, timeout=60), range(3)))
        codes = sorted(r.status_code for r in replies)
        assert codes[0] == 200 and codes[-1] == 429, codes
        for r in replies:
            if r.status_code == 429:
                _one_line_error(r, 429, "busy")
                assert r.headers["retry-after"] == "1"
        assert httpx.get(f"{srv.url}/health").json()["rejected"] == codes.count(429)


def test_internal_failure_is_500_one_line(pipe, image_png):
    from starlette.testclient import TestClient

    from feather.serve.app import create_app

    def broken(*args, **kwargs):
        raise RuntimeError("segment exploded\nwith a second line")

    fake = types.SimpleNamespace(encoder=pipe.encoder, manifest=pipe.manifest, eos=getattr(pipe, "eos", None),
                                 generate=broken)
    client = TestClient(create_app(fake, "feather"), raise_server_exceptions=False)
    r = client.post("/v1/chat/completions", json=chat_body(data_uri(image_png)))
    err = _one_line_error(r, 500, "internal")
    assert "exploded" not in err["message"]  # internals stay in the server log
    assert client.get("/health").json()["failed"] == 1
