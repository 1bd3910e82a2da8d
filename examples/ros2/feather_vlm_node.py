"""ROS 2 node: answers questions about the latest camera image with feather-serve.

Subscribes to ``image`` (sensor_msgs/Image) and ``question`` (std_msgs/String); for each
question, sends the latest image (PNG-encoded) to feather-serve's /v1/chat/completions and
publishes the answer on ``answer`` (std_msgs/String). The HTTP call runs in a worker
thread, so image callbacks keep flowing while the model thinks. See README.md here.

    ros2 run ... or: python3 feather_vlm_node.py --ros-args -p url:=http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_png(msg: Image) -> bytes:
    """sensor_msgs/Image (8-bit encodings) -> PNG bytes, RGB order."""
    from PIL import Image as PILImage

    if msg.encoding not in _CHANNELS:
        raise ValueError(f"image encoding {msg.encoding!r}; expected one of {', '.join(_CHANNELS)}")
    c = _CHANNELS[msg.encoding]
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * c].reshape(msg.height, msg.width, c) if c > 1 else rows[:, : msg.width]
    if msg.encoding.startswith("bgr"):
        pixels = pixels[..., [2, 1, 0] + ([3] if c == 4 else [])]
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


class FeatherVLMNode(Node):
    def __init__(self) -> None:
        super().__init__("feather_vlm")
        self.url = self.declare_parameter("url", "http://127.0.0.1:8000/v1").value
        self.api_key = self.declare_parameter("api_key", "none").value
        self.max_tokens = self.declare_parameter("max_tokens", 64).value
        self.latest: Image | None = None
        self.busy = threading.Lock()
        self.answers = self.create_publisher(String, "answer", 10)
        self.create_subscription(Image, "image", self.on_image, 1)
        self.create_subscription(String, "question", self.on_question, 10)

    def on_image(self, msg: Image) -> None:
        self.latest = msg

    def on_question(self, msg: String) -> None:
        if self.latest is None:
            self.get_logger().warning("no image received yet; question ignored")
            return
        if not self.busy.acquire(blocking=False):
            self.get_logger().warning("still answering the previous question; question ignored")
            return
        threading.Thread(target=self.answer, args=(self.latest, msg.data), daemon=True).start()

    def answer(self, image: Image, question: str) -> None:
        from openai import OpenAI

        try:
            uri = "data:image/png;base64," + base64.b64encode(image_to_png(image)).decode()
            client = OpenAI(base_url=self.url, api_key=self.api_key)
            model = client.models.list().data[0].id
            reply = client.chat.completions.create(
                model=model, max_tokens=self.max_tokens,
                messages=[{"role": "user", "content": [{"type": "text", "text": question},
                                                       {"type": "image_url", "image_url": {"url": uri}}]}])
            self.answers.publish(String(data=reply.choices[0].message.content))
        except Exception as err:  # a robot keeps running: log and wait for the next question
            self.get_logger().error(f"feather-serve request failed: {err}")
        finally:
            self.busy.release()


def main() -> None:
    rclpy.init()
    node = FeatherVLMNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
