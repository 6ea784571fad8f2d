"""ROS 2 bags in and out: bags written here with rosbags, run through pg-run, read back."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import fashion_frames
from click.testing import CliRunner

from patchguard.runtime.cli.run import main
from patchguard.runtime.errors import PatchGuardError
from patchguard.runtime.pipeline import Pipeline

cv2 = pytest.importorskip("cv2")
rosbags = pytest.importorskip("rosbags")
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_HUMBLE)
Image = STORE.types["sensor_msgs/msg/Image"]
CompressedImage = STORE.types["sensor_msgs/msg/CompressedImage"]
Header = STORE.types["std_msgs/msg/Header"]
Time = STORE.types["builtin_interfaces/msg/Time"]
RAW, JPEG = "/camera/image_raw", "/camera/image_raw/compressed"
FRAMES = 300
START_NS = 1_700_000_000 * 10**9 + 123_456_789


def stamps(count: int) -> list[int]:
    """Uneven stamps (a real camera's jitter), odd nanoseconds included."""
    return [START_NS + i * 33_333_333 + (i * 7919) % 1000 for i in range(count)]


def _header(stamp: int) -> object:
    return Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera_optical")


def tinted_frames(count: int) -> list[np.ndarray]:
    """Fashion-MNIST garments at 96x128, tinted so every channel differs (BGR)."""
    frames, _ = fashion_frames(count, (96, 128))
    tints = np.array([[0.35, 0.7, 1.0], [1.0, 0.5, 0.2], [0.6, 1.0, 0.4]])
    return [np.ascontiguousarray(f * tints[i % 3]).astype(np.uint8) for i, f in enumerate(frames)]


def write_bag(path: Path, frames: list[np.ndarray], storage: StoragePlugin = StoragePlugin.MCAP,
              encoding: str = "rgb8", compressed: bool = True) -> Path:
    """A rosbag2 folder with an ``encoding`` Image topic (+ a JPEG CompressedImage topic)."""
    with Writer(path, version=9, storage_plugin=storage) as writer:
        raw = writer.add_connection(RAW, Image.__msgtype__, typestore=STORE)
        jpeg = writer.add_connection(JPEG, CompressedImage.__msgtype__, typestore=STORE) if compressed else None
        for frame, stamp in zip(frames, stamps(len(frames))):
            if encoding == "rgb8":
                pixels = np.ascontiguousarray(frame[..., ::-1])
            elif encoding == "mono16":
                pixels = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
            else:
                raise ValueError(encoding)
            h, w = pixels.shape[:2]
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            msg = Image(header=_header(stamp), height=h, width=w, encoding=encoding, is_bigendian=0,
                        step=w * channels * pixels.itemsize,
                        data=np.frombuffer(pixels.tobytes(), dtype=np.uint8))
            # Logged a little after capture, as a recorder does: stamps must come from the header.
            writer.write(raw, stamp + 5_000_000, STORE.serialize_cdr(msg, Image.__msgtype__))
            if jpeg is not None:
                ok, data = cv2.imencode(".jpg", frame)
                assert ok
                cmsg = CompressedImage(header=_header(stamp), format="jpeg", data=data.reshape(-1))
                writer.write(jpeg, stamp + 6_000_000, STORE.serialize_cdr(cmsg, CompressedImage.__msgtype__))
    return path


@pytest.fixture(scope="session")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The 300-frame MCAP file (rgb8 Image + CompressedImage topics) and its BGR frames."""
    frames = tinted_frames(FRAMES)
    folder = write_bag(tmp_path_factory.mktemp("bags") / "drive", frames)
    return folder / "drive.mcap", frames


def read_topics(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Every message of a bag, deserialised, per topic: (log time, message)."""
    found: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path], default_typestore=STORE) as reader:
        for connection, logged, raw in reader.messages():
            found.setdefault(connection.topic, []).append(
                (logged, reader.deserialize(raw, connection.msgtype)))
    return found


def decoded_input(path: Path, topic: str) -> list[tuple[int, np.ndarray]]:
    """The input frames as the test decodes them itself: (header stamp, frame)."""
    out = []
    for _, msg in read_topics(path)[topic]:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        if topic == JPEG:
            frame = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        else:
            frame = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3)
        out.append((stamp, frame))
    return out


def _verdict(d: dict) -> tuple:
    box = d["masked_box"]
    return d["label"], d["certified"], d["certified_patch_px"], None if box is None else tuple(box)


def _pipeline_verdict(r) -> tuple:
    return r.label, r.certified, r.certified_patch_px, r.masked_box


def pg_run(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from patchguard.runtime.cli.run import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("topic, color", [(RAW, "rgb"), (JPEG, "bgr")], ids=["rgb8", "compressed"])
def test_bag_in_bag_out_matches_the_pipeline(default_onnx: Path, drive, tmp_path: Path,
                                             topic: str, color: str) -> None:
    bag, _ = drive
    out = tmp_path / "results.mcap"
    done = pg_run("--engine", str(default_onnx), "--source", str(bag), "--topic", topic,
                  "--save-bag", str(out), "--jsonl", str(tmp_path / "r.jsonl"))
    assert done.returncode == 0, done.stderr
    assert f"{FRAMES} frames" in done.stderr
    assert out.is_file() and not list(tmp_path.glob(".*part*"))  # one MCAP file, staging gone

    inputs = decoded_input(bag, topic)
    got = read_topics(out)
    results, overlays = got["/patchguard/result"], got["/patchguard/overlay/compressed"]
    assert len(results) == len(overlays) == len(inputs) == FRAMES
    with Pipeline.from_engine(default_onnx) as pipeline:
        expected = [_pipeline_verdict(pipeline(frame, color=color)) for _, frame in inputs]
    for i, ((stamp, frame), (r_time, r_msg), (o_time, o_msg)) in enumerate(zip(inputs, results, overlays)):
        row = json.loads(r_msg.data)
        assert r_time == o_time == stamp  # log times are the input header stamps
        assert row["stamp"] == {"sec": stamp // 10**9, "nanosec": stamp % 10**9}
        assert row["frame_id"] == "camera_optical" and row["frame"] == i
        assert row["capture_time"] == pytest.approx(stamp / 1e9, abs=1e-6)
        assert (o_msg.header.stamp.sec, o_msg.header.stamp.nanosec) == (stamp // 10**9, stamp % 10**9)
        overlay = cv2.imdecode(np.asarray(o_msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        assert o_msg.format == "jpeg" and overlay.shape == frame.shape
        assert _verdict(row) == expected[i], i
    assert any(v[1] for v in expected) and not all(v[1] for v in expected)


@pytest.mark.fashion_mnist
def test_color_rgb_on_an_rgb8_bag_equals_the_frames_as_bgr_files(default_onnx: Path, drive,
                                                                   tmp_path: Path) -> None:
    bag, frames = drive
    count = 40
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames[:count]):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    runner = CliRunner()
    from_bag, from_files = tmp_path / "bag.jsonl", tmp_path / "files.jsonl"
    for args in (["--source", str(bag), "--topic", RAW, "--color", "rgb", "--jsonl", str(from_bag),
                  "--max-frames", str(count)],
                 ["--source", str(folder), "--jsonl", str(from_files)]):
        result = runner.invoke(main, ["--engine", str(default_onnx), *args])
        assert result.exit_code == 0, result.output
    rows = [[_verdict(json.loads(line)) for line in p.read_text().splitlines()
             if json.loads(line).get("kind") != "header"] for p in (from_bag, from_files)]
    assert len(rows[0]) == len(rows[1]) == count and rows[0] == rows[1]
    # The same bag read as BGR (the wrong order) sees other images: the option is not a no-op.
    swapped = tmp_path / "swapped.jsonl"
    result = runner.invoke(main, ["--engine", str(default_onnx), "--source", str(bag), "--topic", RAW,
                                  "--color", "bgr", "--jsonl", str(swapped), "--max-frames", str(count)])
    assert result.exit_code == 0, result.output
    assert [_verdict(json.loads(x)) for x in swapped.read_text().splitlines()
            if json.loads(x).get("kind") != "header"] != rows[1]


@pytest.mark.fashion_mnist
def test_topic_missing_or_wrong_lists_the_image_topics(default_onnx: Path, drive) -> None:
    bag, _ = drive
    for extra in ([], ["--topic", "/nope"]):
        result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(bag), *extra])
        assert result.exit_code == 1
        line = result.output.strip()
        assert "\n" not in line and line.startswith("Error:")
        assert f"{RAW} (Image, {FRAMES})" in line and f"{JPEG} (CompressedImage, {FRAMES})" in line
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(bag.parent),
                                       "--topic", RAW, "--max-frames", "3"])  # the bag folder reads too
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(bag), "--topic",
                                       RAW, "--save-bag", str(bag.parent)])
    assert result.exit_code == 1 and "folder" in result.output and "--save-bag" in result.output


@pytest.mark.fashion_mnist
def test_sqlite3_bag_folder_and_mono16_with_a_value_range(default_onnx: Path, tmp_path: Path) -> None:
    frames = tinted_frames(12)
    bag = write_bag(tmp_path / "mono", frames, storage=StoragePlugin.SQLITE3, encoding="mono16",
                    compressed=False)
    runner = CliRunner()
    result = runner.invoke(main, ["--engine", str(default_onnx), "--source", str(bag)])
    assert result.exit_code == 1 and "--value-range" in result.output and "uint16" in result.output
    out = tmp_path / "out"  # no .mcap suffix: a rosbag2 folder
    result = runner.invoke(main, ["--engine", str(default_onnx), "--source", str(bag),
                                  "--value-range", "0", "65535", "--save-bag", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "metadata.yaml").is_file()
    rows = [json.loads(m.data) for _, m in read_topics(out)["/patchguard/result"]]
    with Pipeline.from_engine(default_onnx) as pipeline:
        expected = [_pipeline_verdict(pipeline(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))) for f in frames]
    assert [_verdict(r) for r in rows] == expected


def test_sink_leaves_nothing_when_the_run_fails(tmp_path: Path) -> None:
    from patchguard.runtime.rosbag import BagSink

    sink = BagSink(tmp_path / "fail.mcap")
    sink.write_view(np.zeros((8, 8, 3), np.uint8), {"frame": 0}, 5)
    sink.close(keep=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PatchGuardError, match="exists"):
        (tmp_path / "taken").write_text("x")
        BagSink(tmp_path / "taken")


def test_not_a_bag_is_one_line(tmp_path: Path) -> None:
    from patchguard.runtime.sources import open_source

    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"\x89MCAP0\r\n" + bytes(range(200)))
    with pytest.raises(PatchGuardError, match="cannot be read as a ROS bag") as info:
        open_source(str(junk))
    assert "\n" not in str(info.value)
    with pytest.raises(PatchGuardError, match="--topic is for ROS bags"):
        open_source(str(tmp_path), topic="/camera")


@pytest.mark.fashion_mnist
def test_ros1_bag_with_bgr8_images(default_onnx: Path, tmp_path: Path) -> None:
    """A ROS 1 .bag (Noetic types, ROS 1 serialisation) reads through the same source."""
    from rosbags.rosbag1 import Writer as Writer1

    store = get_typestore(Stores.ROS1_NOETIC)
    image, header, time_t = (store.types[t] for t in
                             ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    frames = tinted_frames(6)
    bag = tmp_path / "old.bag"
    with Writer1(bag) as writer:
        conn = writer.add_connection(RAW, image.__msgtype__, typestore=store)
        for i, (frame, stamp) in enumerate(zip(frames, stamps(6))):
            h, w = frame.shape[:2]
            msg = image(header=header(seq=i, stamp=time_t(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                      frame_id="cam"),
                        height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3, data=frame.reshape(-1))
            writer.write(conn, stamp, store.serialize_ros1(msg, image.__msgtype__))
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["--engine", str(default_onnx), "--source", str(bag), "--jsonl", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert [r["capture_time"] for r in rows] == pytest.approx([s / 1e9 for s in stamps(6)], abs=1e-6)
    with Pipeline.from_engine(default_onnx) as pipeline:
        assert [_verdict(r) for r in rows] == [_pipeline_verdict(pipeline(f)) for f in frames]


def test_without_rosbags_the_error_names_the_ros_extra(tmp_path: Path) -> None:
    bag = tmp_path / "drive.mcap"
    bag.write_bytes(b"\x89MCAP0\r\n")
    code = ("import sys; sys.modules['rosbags'] = None\n"
            "from patchguard.runtime.sources import open_source\n"
            f"open_source({str(bag)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "patchguard-edge[ros]" in done.stderr
