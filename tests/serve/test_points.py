"""Operating points through feather-serve (docs/operating-points.md): the request's ``feather``
field chooses ratio / stride / mode, answers like feather-run and the Python API at that point,
and is refused with one line (400) before any generation when out of range or malformed."""

from __future__ import annotations

import contextlib
import io
import json

import httpx
import pytest

from tests.serve.conftest import PROMPT, ThreadServer, chat_body, data_uri

N_TOKENS = 8
POINT = {"ratio": 0.5, "stride": 2}
RANGE = "(ratio 0.05..0.95, stride 1..24, modes static, paper)"


@pytest.fixture(scope="module")
def at_point(export_feather, image_png):
    """feather-run --ratio 0.5 --stride 2 --json: what the server must answer at that point."""
    from feather.runtime.cli import main as feather_run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = feather_run([str(export_feather), "--image", str(image_png), "--prompt", PROMPT,
                          "--max-new-tokens", str(N_TOKENS), "--ratio", "0.5", "--stride", "2", "--json"])
    assert rc == 0
    return json.loads(out.getvalue())


def _post(server, body, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60, **kw)


def test_a_point_answers_like_feather_run_and_the_api_at_that_point(server, image_png, pipe, at_point):
    reply = _post(server, chat_body(data_uri(image_png), max_tokens=N_TOKENS, feather=POINT))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    ext = body["feather"]
    assert ext["tokens"] == at_point["tokens"] and body["choices"][0]["message"]["content"] == at_point["text"]
    assert ext["stages"] == at_point["stages"]
    assert ext["point"] == at_point["point"] == {"ratio": 0.5, "stride": 2, "mode": "static"}
    api = pipe.generate(str(image_png), PROMPT, max_new_tokens=N_TOKENS, prune=POINT)
    assert ext["tokens"] == api.tokens and ext["stages"] == api.stages
    kept = [len(s["kept"]) for s in ext["stages"]]
    op = ext["operating_point"]
    assert (op["ratio"], op["stride"], op["mode"]) == (0.5, 2, "static")
    assert [s["keep"] for s in op["stages"]] == kept
    assert ext["points"] == {"ratio": [0.05, 0.95], "stride": [1, 24], "modes": ["static", "paper"]}
    # the default point (no field) keeps other counts: the field was not ignored
    default = _post(server, chat_body(data_uri(image_png), max_tokens=N_TOKENS)).json()["feather"]
    assert default["point"] == {"ratio": 0.7, "stride": 3, "mode": "static"}
    assert [len(s["kept"]) for s in default["stages"]] == [236, 21] != kept
    assert [s["keep"] for s in default["operating_point"]["stages"]] == [236, 21]
    # the OpenAI client sends it as extra_body
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="feather", max_tokens=N_TOKENS, extra_body={"feather": POINT},
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT},
                                               {"type": "image_url", "image_url": {"url": data_uri(image_png)}}]}])
    assert reply.model_extra["feather"]["tokens"] == at_point["tokens"]
    assert reply.model_extra["feather"]["point"] == at_point["point"]
    # a subset: the rest from the export (stride 3, static)
    only_mode = _post(server, chat_body(data_uri(image_png), max_tokens=2, feather={"mode": "paper"})).json()
    assert only_mode["feather"]["point"] == {"ratio": 0.7, "stride": 3, "mode": "paper"}


def test_a_streamed_answer_at_a_point_ends_with_that_point(server, image_png, at_point):
    body = chat_body(data_uri(image_png), max_tokens=N_TOKENS, feather=POINT, stream=True)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == at_point["text"]
    last = events[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["feather"]["point"] == at_point["point"] and last["feather"]["tokens"] == at_point["tokens"]


BAD = {
    "ratio out of range": ({"ratio": 0.99}, f"feather.ratio: 0.99 is outside the range this export accepts {RANGE}"),
    "stride out of range": ({"stride": 25}, f"feather.stride: 25 is outside the range this export accepts {RANGE}"),
    "ratio string": ({"ratio": "half"}, "feather.ratio: got 'half'; expected a number, the fraction pruned"),
    "stride float": ({"stride": 2.5}, "feather.stride: got 2.5; expected an integer grid stride"),
    "unknown mode": ({"mode": "fast"}, "feather.mode: got 'fast'; expected one of static, paper"),
    "unknown field": ({"ratio": 0.5, "keep": 100},
                      "feather: unknown field 'keep'; expected any of ratio, stride, mode"),
    "not an object": (0.5, "feather: expected an object with any of ratio, stride, mode, got a number"),
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_point_is_400_in_one_line_before_any_generation(server, image_png, stream):
    before = httpx.get(f"{server.url}/health").json()
    for case, (value, message) in BAD.items():
        r = _post(server, chat_body(data_uri(image_png), feather=value, stream=stream))
        assert r.status_code == 400, (case, r.text)
        assert "\n" not in r.text and "Traceback" not in r.text
        err = r.json()["error"]
        assert (err["message"], err["param"], err["type"]) == (message, "feather", "invalid_request_error"), case
    after = httpx.get(f"{server.url}/health").json()
    assert {k: after[k] for k in ("completed", "failed", "cancelled")} == \
        {k: before[k] for k in ("completed", "failed", "cancelled")}  # nothing was generated


def test_an_unpruned_export_refuses_a_point(export_none, image_png):
    from feather.runtime import Pipeline
    from feather.serve.app import create_app

    with ThreadServer(create_app(Pipeline.load(export_none), "feather")) as srv:
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=chat_body(data_uri(image_png), feather={"ratio": 0.5}),
                       timeout=60)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(
            "feather: this export prunes nothing (criterion none)")
        ok = httpx.post(f"{srv.url}/v1/chat/completions", json=chat_body(data_uri(image_png), max_tokens=2),
                        timeout=60).json()["feather"]
        assert ok["point"] is None and ok["points"] is None and ok["stages"] == []
