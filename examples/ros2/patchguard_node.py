"""A ROS 2 node: a label and a certificate for every image on a topic.

    python3 examples/ros2/patchguard_node.py --ros-args \
        -p model:=model.onnx -p image_topic:=/camera/image_raw -p patch_size:=20

Subscribes to ``image_topic`` (sensor_msgs/Image, or CompressedImage when the
topic ends in /compressed or image_type is "compressed"), publishes per frame
the result on ``result_topic`` (std_msgs/String holding the JSON object of a
``pg-run --jsonl`` frame line, plus the input stamp and frame_id) and the
overlay on ``overlay_topic`` (sensor_msgs/CompressedImage, JPEG; "" turns it
off): the same layout ``pg-run --save-bag`` writes, so Foxglove and rviz
show a live robot and a recorded drive alike.

The node is deliberately thin: message conversions and the per-message step
(``run_on_message``) live in ``patchguard.runtime.rosmsg`` and are tested
there against rosbags' message classes; this file only wires rclpy to them.
Sensor-data QoS (best effort, depth 1) keeps the newest frame, not a backlog.

Parameters: model (path to .onnx or .plan), patch_size (camera px; 0: the
model's own patch scaled to the frame), patch_frac (0: unused), thres (T),
defense_clip (c_h; 0: none), color ("" the encoding's order, or rgb / bgr),
image_topic, image_type ("auto", "raw", "compressed"), result_topic, overlay_topic.
"""
from __future__ import annotations

import array
import sys

import rclpy
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.pipeline import Pipeline
from patchguard.runtime.rosmsg import COMPRESSED, IMAGE, OVERLAY_TOPIC, RESULT_TOPIC, MessageTypes, run_on_message

TYPES = MessageTypes(Header=Header, Time=Time, Image=Image, CompressedImage=CompressedImage,
                     String=String, pack=lambda data: array.array("B", data))


class PatchGuardNode(Node):
    def __init__(self) -> None:
        super().__init__("patchguard")
        p = {name: self.declare_parameter(name, default).value for name, default in {
            "model": "", "patch_size": 0, "patch_frac": 0.0, "thres": 0.0, "defense_clip": 0.0,
            "color": "", "image_topic": "/camera/image_raw", "image_type": "auto",
            "result_topic": RESULT_TOPIC, "overlay_topic": OVERLAY_TOPIC}.items()}
        if not p["model"]:
            raise PatchGuardError("set the model parameter: -p model:=model.onnx")
        self.pipeline = Pipeline.from_engine(
            p["model"], patch_size=p["patch_size"] or None, patch_frac=p["patch_frac"] or None,
            thres=p["thres"], clip=p["defense_clip"] or None)
        compressed = p["image_type"] == "compressed" or (
            p["image_type"] == "auto" and p["image_topic"].rstrip("/").endswith("/compressed"))
        self.msgtype = COMPRESSED if compressed else IMAGE
        self.color = p["color"] or None
        self.source = p["image_topic"]
        self.count = 0
        self.results = self.create_publisher(String, p["result_topic"], 10)
        self.overlays = self.create_publisher(CompressedImage, p["overlay_topic"], 10) \
            if p["overlay_topic"] else None
        self.create_subscription(CompressedImage if compressed else Image, p["image_topic"],
                                 self.on_image, qos_profile_sensor_data)
        self.get_logger().info(f"{p['model']} on {p['image_topic']} -> {p['result_topic']}")

    def on_image(self, msg: object) -> None:
        try:
            _, overlay, result = run_on_message(self.pipeline, msg, TYPES, self.count, self.source,
                                                  self.msgtype, self.color)
        except PatchGuardError as exc:  # one bad frame (unsupported encoding, ...): say so, go on
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            return
        self.count += 1
        self.results.publish(result)
        if self.overlays is not None:
            self.overlays.publish(overlay)

    def destroy_node(self) -> None:
        self.pipeline.close()
        super().destroy_node()


def main() -> int:
    rclpy.init(args=sys.argv)
    try:
        node = PatchGuardNode()
    except PatchGuardError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 1
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
