"""pg-run: label and certify every frame of a camera, video, image folder or stream."""
from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Optional

import click

from ..console import Command, StopSignals, info, progress
from ..errors import EXIT_CODES_HELP, ExitCode, OutputError, PatchGuardError, Terminated
from ..geometry import parse_size_flags

EXAMPLES = """
\b
Examples:
  pg-run --model model.plan --camera 0 --show
  pg-run --model model.onnx --source clip.avi --jsonl frames.jsonl --save-video out.avi
  pg-run --model model.onnx --source photos/ --patch-frac 0.02 --jsonl -
  pg-run --model model.onnx --camera 0 --on-alert exit --abstain-below 0.4 --abstain-spread 4
  pg-run --model model.onnx --source clip.avi --defense double --top-k 3 --jsonl out.jsonl
  pg-run --model cleanser.int8.onnx --source clip.avi --certify 10 --jsonl out.jsonl  # PatchCleanser
  pg-run --model model.plan --source "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,\\
height=720 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink"
\b
The patch is stated in camera pixels (a square of --patch-size PX, or of
--patch-frac F of the frame area); by default the model's own patch size,
mapped from model pixels to camera pixels. The summary goes to stderr.
Every frame also gets provable detection's alert (--tau), the top-k masked
scores, the certification margin, a confidence and the cell spread; frames
below --abstain-below / --abstain-spread get label -1 and no certificate. A
certificate says no patch of that size changes the label; it does not say the
frame shows anything the model knows (a black frame is confidently "Dress").
"""

EXIT_STATUS = "\n\b\n" + EXIT_CODES_HELP.replace(": ", ":\n  ", 1).replace("; ", ";\n  ") + "\n"


def _log_through(bar: Any) -> Any:
    """Route log lines (skipped files) above the progress bar instead of through it."""
    if getattr(bar, "disable", True):
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    return logging_redirect_tqdm()


@click.command(cls=Command, epilog=EXAMPLES + EXIT_STATUS)
@click.option("--model", "--engine", "engine", type=click.Path(dir_okay=False), required=True,
              help="Exported model: .onnx (onnxruntime) or .plan (TensorRT, with its .plan.json); "
                   "--engine is the older name.")
@click.option("--camera", default=None,
              help="Camera: an index (0), a device (/dev/video0) or a udev path (/dev/v4l/by-id/...).")
@click.option("--camera-frame-size", default=None, metavar="HxW",
              help="Ask the camera for this frame size, rows x columns like every size flag (720x1280).")
@click.option("--camera-size", default=None, metavar="WxH",
              help="Older spelling of --camera-frame-size, width first (1280x720).")
@click.option("--camera-fps", type=float, default=None, help="Ask the camera for this frame rate.")
@click.option("--reconnect", type=int, default=0, show_default=True,
              help="Reopen a camera that stops delivering, up to N tries per outage (back-off "
                   "0.5 s to 8 s); a video file given to --camera ends, it is not reopened.")
@click.option("--source", default=None,
              help="Video file, image, folder (sorted), glob, RTSP/HTTP URL or GStreamer pipeline.")
@click.option("--patch-size", type=int, default=None, help="Patch side in camera pixels.")
@click.option("--patch-frac", type=float, default=None, help="Patch area as a fraction of the frame (0.02 = 2%).")
@click.option("--thres", type=float, default=0.0, show_default=True, help="Detection threshold T of robust masking.")
@click.option("--clip", type=float, default=None, help="Clipping ceiling c_h (default: none).")
@click.option("--provider", default=None, help="onnxruntime provider: cpu (default), cuda, tensorrt.")
@click.option("--jsonl", default=None,
              help="Write a header line and one JSON object per frame to FILE (created at the first "
                   "frame, replacing an earlier file unless --append), or - for stdout.")
@click.option("--append", is_flag=True, help="Add to an existing --jsonl file instead of replacing it.")
@click.option("--jsonl-header", type=click.Path(dir_okay=False), default=None,
              help="Write the header (schema, model SHA-256, defense, settings) to this file "
                   "instead of the first --jsonl line.")
@click.option("--save-video", type=click.Path(dir_okay=False), default=None,
              help="Write the annotated frames to this .avi/.mp4.")
@click.option("--show", is_flag=True, help="Show the annotated frames in a window (q quits).")
@click.option("--max-frames", type=int, default=None, help="Stop after N frames.")
@click.option("--topic", default=None,
              help="Image topic of a ROS bag source (sensor_msgs/Image or CompressedImage).")
@click.option("--save-bag", type=click.Path(), default=None,
              help="Write overlays and results as a ROS 2 bag: OUT.mcap (one file) or a rosbag2 folder.")
@click.option("--color", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default=None,
              help="Channel order of the frames [default: bgr for OpenCV sources, the "
                   "encoding's own for ROS bags].")
@click.option("--value-range", type=float, nargs=2, default=None, metavar="LO HI",
              help="Map frames that are not uint8 (mono16, float) from LO..HI onto 0..255.")
@click.pass_context
@click.option("--defense", type=click.Choice(["mask", "double"]), default="mask", show_default=True,
              help="Robust masking, or feature-space double masking (one BagNet pass either way).")
@click.option("--masks-per-axis", type=int, default=None,
              help="Double masking: masks per axis (default 6).")
@click.option("--tau", type=float, default=None,
              help="Alert threshold of provable detection in [0, 1) (default 0.8).")
@click.option("--on-alert", type=click.Choice(["mark", "exit"]), default="mark", show_default=True,
              help="mark: flag the frame (JSONL, overlay) and go on; exit: write the frame, "
                   "finalise the outputs and exit with status 5.")
@click.option("--top-k", type=int, default=1, show_default=True,
              help="List the K best classes and masked scores (and certify the top K, --defense mask).")
@click.option("--abstain-below", type=float, default=None,
              help="Abstain (label -1, never certified) when the confidence is below P.")
@click.option("--abstain-spread", type=float, default=None,
              help="Abstain when the cell-to-cell spread of the local logits is below S "
                   "(a uniform frame has 0).")
@click.option("--certify", "certify", default="every", show_default=True, metavar="every|N|none",
              help="View defenses (PatchCleanser: up to |M|(|M|+1)/2 views per frame): certify every "
                   "frame, every N-th, or none; the label never depends on it. BagNets: every.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="With a .plan engine: the ONNX it was built from; its graph is proved again and "
                   "its SHA-256 checked against the engine's sidecar.")
@click.option("--allow-unverified", is_flag=True,
              help="Run a model whose locality does not prove, for labels only: every frame "
                   "says certified: false, with the reason.")
def main(ctx: click.Context, engine: str, camera: Optional[str], camera_frame_size: Optional[str],
         camera_size: Optional[str],
         camera_fps: Optional[float], reconnect: int, source: Optional[str],
         patch_size: Optional[int], patch_frac: Optional[float], thres: float, clip: Optional[float],
         provider: Optional[str], jsonl: Optional[str], append: bool, jsonl_header: Optional[str],
         save_video: Optional[str], show: bool, max_frames: Optional[int], topic: Optional[str],
         save_bag: Optional[str],
         color: Optional[str],
         value_range: Optional[tuple[float, float]], defense: str, masks_per_axis: Optional[int],
         tau: Optional[float], on_alert: str, top_k: int, abstain_below: Optional[float],
         abstain_spread: Optional[float], certify: str,
         allow_unverified: bool, onnx_path: Optional[str]) -> None:
    """Label every frame with robust masking and certify it against a patch of camera pixels."""
    from ..camera import open_camera
    from ..detection import DEFAULT_TAU
    from ..files import check_outputs, write_text_atomic
    from ..heap import keep_freed_memory
    from ..pipeline import Pipeline, stream
    from ..resultstream import header_row
    from ..sinks import DisplaySink, JsonlSink, RunSummary, Sink, VideoSink
    from ..sources import open_source

    keep_freed_memory()  # every frame reuses the last one's memory (glibc)

    if (camera is None) == (source is None):
        raise PatchGuardError("give exactly one of --camera N or --source S")
    camera_hw = parse_size_flags(camera_frame_size, camera_size, "--camera-frame-size", "--camera-size")
    if camera is None and (camera_hw or camera_fps or reconnect):
        raise PatchGuardError("--camera-frame-size, --camera-fps and --reconnect apply to --camera")
    if max_frames is not None and max_frames < 1:
        raise PatchGuardError(f"--max-frames must be at least 1, got {max_frames}")
    if append and not jsonl:
        raise PatchGuardError("--append applies to --jsonl FILE; give --jsonl too")
    # Before anything is opened or written: no output may destroy an input.
    check_outputs({"--jsonl": jsonl, "--jsonl-header": jsonl_header, "--save-video": save_video,
                   "--save-bag": save_bag},
                  {"--model": engine, "--source": source, "--onnx": onnx_path,
                   "the engine's sidecar": f"{engine}.json" if engine.endswith(".plan") else None})
    code = ExitCode.OK
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(StopSignals())
        # Set-up first: a bad option or input fails here, before any frame, with one line.
        pipeline = stack.enter_context(Pipeline.from_engine(
            engine, patch_size=patch_size, patch_frac=patch_frac, thres=thres, clip=clip,
            provider=provider, value_range=value_range or None, defense=defense,
            masks_per_axis=masks_per_axis, top_k=top_k, abstain_below=abstain_below,
            abstain_spread=abstain_spread, certify=certify, allow_unverified=allow_unverified, onnx=onnx_path,
            tau=DEFAULT_TAU if tau is None else tau))
        frames = stack.enter_context(
            open_camera(camera, camera_hw, camera_fps, reconnect) if camera is not None
            else open_source(source or "", topic=topic))
        # Outputs are created at the first result, and closed (finalised) last of all.
        header = None
        if jsonl or jsonl_header:
            settings = {"source": frames.description, "topic": topic, "camera": camera,
                        "color": color, "value_range": list(value_range) if value_range else None,
                        "provider": getattr(pipeline.backend, "provider", provider),
                        "max_frames": max_frames, "certify": certify}
            header = header_row(pipeline, engine, "pg-run", settings)
        if jsonl_header and header is not None:
            write_text_atomic(jsonl_header, json.dumps(header) + "\n")
        jsonl_sink = JsonlSink(jsonl, append=append, header=None if jsonl_header else header) \
            if jsonl else None
        if jsonl_sink:
            stack.callback(jsonl_sink.close)
        video = VideoSink(save_video, frames.fps) if save_video else None
        if video:
            stack.callback(video.close)
        bag = None
        if save_bag:
            from ..rosbag import BagSink

            bag = BagSink(save_bag)
            stack.callback(bag.close)
        display = DisplaySink() if show else None
        if display:
            stack.callback(display.close)
        total = frames.length if max_frames is None or frames.length is None \
            else min(frames.length, max_frames)
        # A bar only where someone watches a terminal; logs and pipes get the summary.
        bar = stack.enter_context(progress(total, "frames", disable=total is None))
        stack.enter_context(_log_through(bar))

        summary = RunSummary()
        try:
            sinks: list[Sink] = [s for s in (jsonl_sink, bag, video, display) if s is not None]
            for item in stream(pipeline, frames, max_frames, color=color):
                with signals.held():  # a frame is in every output and the summary, or in none
                    summary.add(item.result)
                    for sink in sinks:
                        sink.write(item)
                if display and display.stopped:
                    summary.finish("closed by the user")
                    break
                bar.update(1)
                if item.result.alert and on_alert == "exit":
                    summary.finish(f"alert at frame {item.index} (--on-alert exit)")
                    code = ExitCode.ALERT
                    break
            if summary.ended is None and max_frames is not None and summary.frames >= max_frames:
                summary.finish("--max-frames reached")
            if summary.ended is None and frames.lost:
                summary.finish("source lost")
                summary.notes.append(frames.lost)
                code = ExitCode.SOURCE_LOST
        except OutputError:
            summary.finish("an output could not be written")
            raise
        except KeyboardInterrupt:
            summary.finish("interrupted (SIGINT)")
        except Terminated:
            summary.finish("terminated (SIGTERM)")
        finally:
            # Whatever stopped the run, what was written stays valid and the summary is printed;
            # from here on a signal is only recorded, so it cannot cut the finalisation short.
            signals.finalising = True
            if summary.ended is None:
                summary.finish(None if sys.exc_info()[0] is None else "error")
            if frames.skipped:
                summary.notes.append(f"{frames.skipped} unreadable file(s) skipped")
            if jsonl_sink and jsonl != "-":
                summary.notes.append(f"{jsonl_sink.rows} rows written to {jsonl}")
            bar.close()  # before the summary, so the two never share a line
            info(f"{frames.description}: {summary.text()}")
    # Outputs are finalised (an error there exits 4 with its own line); the signal wins over lost.
    ctx.exit(int(signals.exit_code or code))
