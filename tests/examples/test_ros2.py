"""examples/ros2 for real: ROS 2 Kilted's rclpy (PyPI wheels ros-rclpy 9.1, rmw_fastrtps_cpp 9.3) in a
venv of its own, the example node against a running feather-serve, a sensor_msgs/Image and a
question published from another ROS process, and the answer compared with feather-run's.

The ROS Python is ``FEATHER_ROS_PYTHON``, or ``.venv-ros`` in the checkout (.ci/run builds it
before pytest, about 40 s); without either the tests are skipped, saying how to build it. The
tests themselves download nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ros2"
ROS_PACKAGES = ["ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-rmw-fastrtps-cpp", "numpy", "pillow", "openai"]
PROMPT = "What is in this image?"
MAX_TOKENS = 8


@pytest.fixture(scope="session")
def ros_python() -> str:
    """The ROS venv's Python, built outside the test run (nothing downloads at test time):
    ``FEATHER_ROS_PYTHON``, or ``.venv-ros`` in the checkout, as .ci/run builds it."""
    given = os.environ.get("FEATHER_ROS_PYTHON")
    local = ROOT / ".venv-ros" / "bin" / "python"
    if given:
        return given
    if local.exists():
        return str(local)
    pytest.skip("ROS 2 wheels (Kilted, cp311) not installed: build the venv as .ci/run does "
                f"(python3.11 -m venv .venv-ros; .venv-ros/bin/pip install {' '.join(ROS_PACKAGES)}) "
                "or set FEATHER_ROS_PYTHON")


@pytest.fixture()
def ros_env(tmp_path) -> dict:
    """A ROS domain of this test's own, discovery on this host only, logs under tmp_path."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(100 + os.getpid() % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOCALHOST_ONLY="1", ROS_LOG_DIR=str(tmp_path / "ros-log"), RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    return env


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_node_answers_like_feather_run(ros_python, ros_env, export_feather, sample_image, tmp_path):
    image = tmp_path / "sample.png"
    sample_image.save(image)
    port = free_port()
    serve = _start([sys.executable, "-m", "feather.serve.cli", str(export_feather), "--port", str(port),
                    "--served-model-name", "feather", "--log-level", "warning"], tmp_path / "serve.log", ros_env)
    node = None
    try:
        wait_ready(f"http://127.0.0.1:{port}", serve)
        node = _start([ros_python, str(EXAMPLE / "feather_vlm_node.py"), "--ros-args",
                       "-p", f"url:=http://127.0.0.1:{port}/v1", "-p", f"max_tokens:={MAX_TOKENS}"],
                      tmp_path / "node.log", ros_env)
        asked = subprocess.run([ros_python, str(EXAMPLE / "ask_once.py"), str(image), PROMPT, "--timeout", "90"],
                               capture_output=True, text=True, env=ros_env, timeout=120)
        assert node.poll() is None, (tmp_path / "node.log").read_text()
    finally:
        if node is not None:
            _stop(node)
        _stop(serve)
    assert asked.returncode == 0, asked.stderr + (tmp_path / "node.log").read_text()
    answer = json.loads(asked.stdout.strip().splitlines()[-1])["answer"]
    run = subprocess.run([sys.executable, "-m", "feather.runtime.cli", str(export_feather), "--image", str(image),
                          "--prompt", PROMPT, "--max-new-tokens", str(MAX_TOKENS), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    expected = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(expected["tokens"]) == MAX_TOKENS  # the tiny model runs to the limit: a non-trivial answer
    assert answer == expected["text"]
    assert answer != ""


def test_image_to_png_reorders_bgr_and_drops_row_padding(ros_python, tmp_path):
    """The node's conversion itself, in the ROS Python: a bgr8 image with a padded row step."""
    script = f"""
import io, sys
import numpy as np
from PIL import Image as P
sys.path.insert(0, {str(EXAMPLE)!r})
from feather_vlm_node import image_to_png
from sensor_msgs.msg import Image
rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
rows = np.zeros((2, 12), dtype=np.uint8)
rows[:, :9] = rgb[..., ::-1].reshape(2, 9)
msg = Image(height=2, width=3, encoding="bgr8", step=12)
msg.data = rows.tobytes()
print(np.asarray(P.open(io.BytesIO(image_to_png(msg)))).tolist())
"""
    done = subprocess.run([ros_python, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[9, 10, 11], [12, 13, 14], [15, 16, 17]]]
