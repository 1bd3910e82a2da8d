"""Ask feather_vlm_node one question about one picture, from ROS 2, and print the answer.

Publishes the picture on ``image`` (sensor_msgs/Image, rgb8) and the question on ``question``
(std_msgs/String) until an ``answer`` (std_msgs/String) arrives, then prints it as one JSON
line ``{"answer": ...}``. Publishing again until answered rides out DDS discovery (a message
sent before the node's subscriptions are matched is lost); the node answers one question at
a time and ignores the ones that arrive meanwhile. Exits 1 after ``--timeout`` seconds.

    python3 ask_once.py photo.png "What is on the table?" --timeout 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from std_msgs.msg import String


def image_msg(path: str) -> Image:
    """A picture file -> sensor_msgs/Image, rgb8, rows packed (step = 3 * width)."""
    pixels = np.asarray(PILImage.open(path).convert("RGB"), dtype=np.uint8)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8", is_bigendian=0,
                step=3 * pixels.shape[1])
    msg.data = pixels.tobytes()
    return msg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("question")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("feather_vlm_ask_once")
    answers: list[str] = []
    node.create_subscription(String, "answer", lambda m: answers.append(m.data), 10)
    images = node.create_publisher(Image, "image", 1)
    questions = node.create_publisher(String, "question", 10)
    msg, deadline, next_send = image_msg(args.image), time.monotonic() + args.timeout, 0.0
    try:
        while not answers and time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                images.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.2)  # let the image go out before the question
                questions.publish(String(data=args.question))
                next_send = time.monotonic() + 2.0
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    if not answers:
        print(f"no answer on 'answer' within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(json.dumps({"answer": answers[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
