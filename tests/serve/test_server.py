"""feather-serve end to end on a loopback port: parity with feather-run (openai client and
curl), streaming, concurrent clients, disconnects stop generation, RSS over 200 requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import PROMPT, chat_body, data_uri

N_TOKENS = 12


@pytest.fixture(scope="module")
def reference(export_feather, image_png):
    """feather-run --json on the PNG file: the tokens every client must get back."""
    import contextlib
    import io

    from feather.runtime.cli import main as feather_run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = feather_run([str(export_feather), "--image", str(image_png), "--prompt", PROMPT,
                          "--max-new-tokens", str(N_TOKENS), "--json"])
    assert rc == 0
    ref = json.loads(out.getvalue())
    assert len(set(ref["tokens"])) > 2, "the tiny model's greedy answer must vary, or parity proves nothing"
    return ref


def test_openai_client_matches_feather_run(server, image_png, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["feather"]
    reply = client.chat.completions.create(
        model="feather", max_tokens=N_TOKENS, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT},
                                               {"type": "image_url", "image_url": {"url": data_uri(image_png)}}]}])
    ext = reply.model_extra["feather"]
    assert ext["tokens"] == reference["tokens"]
    assert reply.choices[0].message.content == reference["text"]
    assert ext["stages"] == reference["stages"]  # kept image indices per pruning stage
    assert reply.usage.completion_tokens == N_TOKENS
    assert reply.usage.prompt_tokens > 576  # the image's 576 tokens and the question
    assert reply.choices[0].finish_reason == "length"
    assert ext["timings"]["ttft_s"] > 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (the httpx tests cover the route)")
def test_curl_matches_feather_run(server, image_png, reference, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps(chat_body(data_uri(image_png), max_tokens=N_TOKENS)))
    out = subprocess.run(["curl", "-sS", "--fail-with-body", f"{server.url}/v1/chat/completions",
                          "-H", "Content-Type: application/json", "--data-binary", f"@{body}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    reply = json.loads(out)
    assert reply["feather"]["tokens"] == reference["tokens"]
    assert reply["choices"][0]["message"]["content"] == reference["text"]


def test_stream_returns_the_same_text_in_pieces(server, image_png, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="feather", max_tokens=N_TOKENS, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT},
                                               {"type": "image_url", "image_url": {"url": data_uri(image_png)}}]}])
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert "".join(pieces) == reference["text"]
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.choices[0].finish_reason == "length"
    assert last.model_extra["feather"]["tokens"] == reference["tokens"]
    assert chunks[-1].usage.completion_tokens == N_TOKENS


def test_eight_concurrent_clients_get_their_own_answers(server, image_png, pipe):
    from PIL import Image

    prompts = [f"{PROMPT} Answer in {word}." for word in
               ("one word", "French", "a list", "detail", "short", "colors", "numbers", "shapes")]
    image = Image.open(image_png)
    expected = [pipe.generate(image, p, max_new_tokens=6).tokens for p in prompts]
    assert len({tuple(t) for t in expected}) >= 4, "prompts must lead to different answers"

    def ask(prompt: str) -> list[int]:
        r = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(data_uri(image_png), prompt, 6),
                       timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["feather"]["tokens"]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, prompts))
    assert got == expected


def test_disconnected_stream_stops_generation(server, image_png):
    url = f"{server.url}/v1/chat/completions"
    before = httpx.get(f"{server.url}/health").json()
    max_tokens = 150  # greedy runs 155 tokens before end-of-sequence here: only a cancel ends it early
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", url, json=chat_body(data_uri(image_png), max_tokens=max_tokens, stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # one piece read; leaving the block closes the connection
    deadline = time.monotonic() + 20
    while (now := httpx.get(f"{server.url}/health").json())["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, f"generation not cancelled: {now}"
        time.sleep(0.05)
    stopped_after = now["cancelled_tokens"] - before["cancelled_tokens"]
    assert 1 <= stopped_after < max_tokens // 2, stopped_after
    assert now["completed"] == before["completed"]
    assert now["active"] == 0
    # the feather.serve logger has a handler: the line reaches the server's log
    assert f"client disconnected: generation stopped after {stopped_after} of at most {max_tokens} tokens" in \
        server.log.read_text()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc")
def test_rss_flat_over_200_requests(server, image_png):
    uri = data_uri(image_png)
    url = f"{server.url}/v1/chat/completions"
    with httpx.Client(timeout=60) as client:
        def one(i: int) -> None:
            if i % 4 == 3:  # every fourth a stream: both paths
                with client.stream("POST", url, json=chat_body(uri, max_tokens=2, stream=True)) as r:
                    assert r.status_code == 200 and any(line == "data: [DONE]" for line in r.iter_lines())
            else:
                r = client.post(url, json=chat_body(uri, f"{PROMPT} #{i}", max_tokens=1))
                assert r.status_code == 200 and len(r.json()["feather"]["tokens"]) == 1

        with ThreadPoolExecutor(2) as pool:  # warm both worker threads first
            list(pool.map(one, range(8)))
        samples = []
        for i in range(200):
            one(i)
            if i in (0, 99, 199):
                samples.append(_rss_mib(server.pid))
    growth = samples[-1] - samples[0]
    assert growth < 16, f"RSS grew {growth:.1f} MiB over 200 requests (samples {samples})"
