"""Servers for the serve tests: ``feather-serve`` in a subprocess on a free loopback port
(what a user runs; its RSS can be read on its own), and in-thread servers for the variants."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PROMPT = "What is in this image?"


@dataclass
class Served:
    url: str
    pid: int
    log: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"feather-serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="session")
def image_png(sample_image, tmp_path_factory) -> Path:
    """The sample picture as a PNG file: feather-run reads the path, clients send its bytes."""
    path = tmp_path_factory.mktemp("serve") / "sample.png"
    sample_image.save(path)
    return path


def data_uri(path_or_bytes, mime: str = "image/png") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def chat_body(image_url: str, prompt: str = PROMPT, max_tokens: int = 8, **extra) -> dict:
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}]
    return {"model": "feather", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


@pytest.fixture(scope="session")
def server(export_feather, tmp_path_factory):
    """``feather-serve EXPORT --served-model-name feather`` in its own process: 2 slots, 8 waiting, 1 MiB
    bodies; its log (info: one access line per request, disconnects) goes to ``Served.log``."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    cmd = [sys.executable, "-m", "feather.serve.cli", str(export_feather), "--port", str(port),
           "--served-model-name", "feather", "--max-concurrency", "2", "--max-queue", "8", "--max-body-mb", "1",
           "--log-level", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield Served(url, proc.pid, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def pipe(export_feather):
    from feather.runtime import Pipeline

    return Pipeline.load(export_feather)


class ThreadServer:
    """uvicorn serving an app in a thread of the test process, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.url, timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
