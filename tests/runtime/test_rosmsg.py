"""Message <-> frame and result -> message conversions, on rosbags' message classes
(the same functions the ROS 2 node in examples/ros2/ calls with rclpy's)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.rosmsg import (
    COMPRESSED,
    IMAGE,
    STRING,
    compressed_to_frame,
    frame_to_compressed,
    frame_to_image,
    image_to_frame,
    message_to_frame,
    result_to_string,
    rosbags_types,
    string_to_result,
)

cv2 = pytest.importorskip("cv2")
typesys = pytest.importorskip("rosbags.typesys")
STORE = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
TYPES = rosbags_types(STORE)
STAMP = 1_700_000_123 * 10**9 + 987_654_321


def wire(msg: object, msgtype: str) -> object:
    """Through CDR and back, as a bag or a DDS transport carries it."""
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, msgtype), msgtype)


def _frame(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is None:
        return rng.random(shape, dtype=np.float32) * 4 - 1
    return rng.integers(0, int(info.max) + 1, size=shape, dtype=dtype)


@pytest.mark.parametrize("encoding, shape, dtype, color", [
    ("rgb8", (5, 7, 3), "uint8", "rgb"), ("bgr8", (5, 7, 3), "uint8", "bgr"),
    ("rgba8", (5, 7, 4), "uint8", "rgb"), ("bgra8", (5, 7, 4), "uint8", "bgr"),
    ("mono8", (5, 7), "uint8", "bgr"), ("mono16", (5, 7), "uint16", "bgr"),
    ("16UC1", (5, 7), "uint16", "bgr"), ("32FC1", (5, 7), "float32", "bgr"),
])
def test_image_round_trip_keeps_pixels_type_and_order(encoding, shape, dtype, color) -> None:
    frame = _frame(shape, dtype)
    msg = wire(frame_to_image(TYPES, frame, STAMP, "cam", encoding=encoding), IMAGE)
    assert msg.encoding == encoding and msg.header.frame_id == "cam"
    back, order = image_to_frame(msg)
    assert back.dtype == frame.dtype and np.array_equal(back, frame) and order == color


def test_row_padding_and_big_endian_mono16() -> None:
    frame = _frame((4, 6), "uint16", seed=3)
    padded = np.zeros((4, 16), dtype=np.uint8)  # step 16 bytes for 12 bytes of pixels
    padded[:, :12] = frame.astype(">u2").view(np.uint8).reshape(4, 12)
    msg = TYPES.Image(header=TYPES.Header(stamp=TYPES.Time(sec=1, nanosec=2), frame_id=""),
                      height=4, width=6, encoding="mono16", is_bigendian=1, step=16,
                      data=padded.reshape(-1))
    back, _ = image_to_frame(wire(msg, IMAGE))
    assert back.dtype == np.uint16 and np.array_equal(back, frame)


def test_unsupported_or_short_images_are_one_line() -> None:
    msg = TYPES.Image(header=TYPES.Header(stamp=TYPES.Time(sec=0, nanosec=0), frame_id=""),
                      height=2, width=2, encoding="bayer_rggb8", is_bigendian=0, step=2,
                      data=np.zeros(4, np.uint8))
    with pytest.raises(PatchGuardError, match="bayer_rggb8.*supported: rgb8, bgr8"):
        image_to_frame(msg)
    short = TYPES.Image(header=msg.header, height=4, width=4, encoding="rgb8", is_bigendian=0,
                        step=12, data=np.zeros(20, np.uint8))
    with pytest.raises(PatchGuardError, match="does not fit its 20 data bytes"):
        image_to_frame(short)


def test_compressed_round_trip_and_dispatch() -> None:
    frame = np.zeros((30, 40, 3), np.uint8)
    frame[5:20, 10:30] = (0, 0, 255)  # a red block, in BGR
    msg = wire(frame_to_compressed(TYPES, frame, STAMP, "cam", quality=95), COMPRESSED)
    assert msg.format == "jpeg"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(STAMP, 10**9)
    back, order = compressed_to_frame(msg)
    assert order == "bgr" and back.shape == frame.shape
    # JPEG blurs the block's edges; its centre stays red, in BGR order.
    assert np.abs(back[12, 20].astype(int) - (0, 0, 255)).max() < 12 and back[2, 2].max() < 12
    assert message_to_frame(msg)[0].shape == frame.shape  # dispatch by fields
    assert message_to_frame(msg, COMPRESSED)[0].shape == frame.shape
    bad = TYPES.CompressedImage(header=msg.header, format="jpeg", data=np.arange(50, dtype=np.uint8))
    with pytest.raises(PatchGuardError, match="cannot be decoded"):
        compressed_to_frame(bad)


def test_result_string_carries_the_row_and_the_stamp() -> None:
    row = {"schema": "x", "frame": 3, "label": 2, "certified": True}
    msg = wire(result_to_string(TYPES, row, STAMP, "cam"), STRING)
    back = string_to_result(msg)
    assert back == {**row, "stamp": {"sec": STAMP // 10**9, "nanosec": STAMP % 10**9}, "frame_id": "cam"}
    assert json.loads(msg.data)["label"] == 2
    with pytest.raises(PatchGuardError, match="not JSON"):
        string_to_result(TYPES.String(data="{oops"))


def test_plain_python_data_fields_as_rclpy_gives_them() -> None:
    # rclpy hands data as array.array('B') or bytes; the conversions take any buffer.
    import array

    frame = _frame((3, 4, 3), "uint8", seed=5)
    msg = frame_to_image(TYPES, frame, STAMP, encoding="bgr8")
    for data in (array.array("B", frame.tobytes()), frame.tobytes(), list(frame.tobytes())):
        msg.data = data
        assert np.array_equal(image_to_frame(msg)[0], frame)


def test_run_on_message_is_the_nodes_step(default_onnx) -> None:
    """The per-message step of examples/ros2/patchguard_node.py, on rosbags' classes:
    the same verdict as the Pipeline on the decoded frame, the bag layout back."""
    from patchguard.runtime.pipeline import Pipeline
    from patchguard.runtime.rosmsg import run_on_message

    frame = _frame((60, 80, 3), "uint8", seed=9)
    msg = wire(frame_to_image(TYPES, np.ascontiguousarray(frame[..., ::-1]), STAMP, "cam",
                              encoding="rgb8"), IMAGE)
    with Pipeline.from_engine(default_onnx) as pipeline:
        row, overlay, result = run_on_message(pipeline, msg, TYPES, index=4, source="/cam")
        want = pipeline(frame)  # the same pixels, as BGR
    assert (row["label"], row["certified"], row["certified_patch_px"]) == \
        (want.label, want.certified, want.certified_patch_px)
    assert row["frame"] == 4 and row["capture_time"] == pytest.approx(STAMP / 1e9)
    overlay, result = wire(overlay, COMPRESSED), wire(result, STRING)
    assert compressed_to_frame(overlay)[0].shape == (60, 80, 3)
    assert (overlay.header.stamp.sec, overlay.header.stamp.nanosec) == divmod(STAMP, 10**9)
    assert string_to_result(result)["stamp"] == {"sec": STAMP // 10**9, "nanosec": STAMP % 10**9}


def test_ros2_example_node_is_thin_and_compiles() -> None:
    """rclpy cannot be installed here: the node must compile and use only the package's
    conversions (no message handling of its own)."""
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "ros2" / "patchguard_node.py"
    tree = ast.parse(path.read_text(), str(path))
    compile(tree, str(path), "exec")
    imported = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert imported <= {"__future__", "array", "sys", "rclpy", "builtin_interfaces", "sensor_msgs",
                        "std_msgs", "patchguard"}, imported
    assert "run_on_message" in path.read_text() and "np." not in path.read_text()
