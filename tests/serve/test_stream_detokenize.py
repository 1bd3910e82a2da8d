"""The server's stream uses the runtime's incremental detokenizer: the pieces join to the
answer's text, and the widest decode per token does not grow with the answer (the stream
once decoded the whole answer for every token)."""

from __future__ import annotations

import json

from tests.runtime.test_detokenize import LENGTHS, CountingTokenizer, assert_constant_per_token, streaming_calls
from tests.serve.conftest import chat_body, data_uri


def _events(client, body) -> list[dict]:
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_stream_decodes_a_window_per_token(pipe, image_png, monkeypatch):
    from starlette.testclient import TestClient

    from feather.serve.app import create_app

    counting = CountingTokenizer(pipe.encoder.tokenizer)
    monkeypatch.setattr(pipe.encoder, "tokenizer", counting)
    widths = {}
    with TestClient(create_app(pipe, "feather")) as client:
        for n in LENGTHS:
            counting.calls.clear()
            events = _events(client, chat_body(data_uri(image_png), max_tokens=n, stream=True))
            calls = list(counting.calls)
            pieces = [e["choices"][0]["delta"].get("content") for e in events]
            final = events[-1]
            assert final["choices"][0]["finish_reason"] == "length" and len(final["feather"]["tokens"]) == n
            assert len([p for p in pieces if p]) > 3
            assert "".join(p for p in pieces if p) == pipe.encoder.decode(final["feather"]["tokens"])
            widths[n] = streaming_calls(calls, n)
            reply = client.post("/v1/chat/completions", json=chat_body(data_uri(image_png), max_tokens=n)).json()
            assert reply["choices"][0]["message"]["content"] == "".join(p for p in pieces if p)
    assert_constant_per_token(widths)
