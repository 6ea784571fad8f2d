"""Every fault case of issue 11, run for real: exit status, the message, what is on disk.

    python tools/fault_table.py [--only SUBSTRING]

Exports the bundled model once (needs torch), makes a clip, images and bad
files in a temporary folder, runs each case as a user would (a fresh
process), and prints a Markdown table: case | exit | message (the Error:
line, or the summary's tail) | on disk afterwards. Exits 1 when a case
shows a traceback or more than one Error: line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _fault_models import with_huge_constant, with_metadata

COMMANDS = {
    "pg-run": "patchguard.runtime.cli.run:main", "pg-certify": "patchguard.runtime.cli.certify:main",
    "pg-bench": "patchguard.runtime.cli.bench:main", "pg-export": "patchguard.export.cli:main",
    "pg-train": "patchguard.models.cli:train_main", "pg-attack": "patchguard.models.cli:attack_main",
}


def command(name: str, *args: str, block: tuple[str, ...] = ()) -> list[str]:
    module, func = COMMANDS[name].split(":")
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + f"from {module} import {func}\nsys.exit({func}())")
    return [sys.executable, "-c", code, *args]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "absent"


def message(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    warnings = [line for line in lines if line.startswith("warning:")]
    text = errors[0] if errors else warnings[0] if warnings else (lines[-1] if lines else "")
    if not errors and not warnings and "stopped:" in text:  # a run summary: why it stopped
        text = "summary: " + text[text.index("stopped:"):]
    return text if len(text) <= 150 else text[:147] + "..."


def png_bomb(path: Path, side: int = 60000) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1) * 4)) + chunk(b"IEND", b""))
    return path


class Table:
    def __init__(self, only: Optional[str]) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.only = only
        self.bad = 0

    def case(self, name: str, argv: list[str], disk: Callable[[], str], cwd: Optional[Path] = None,
             signal_after: Optional[float] = None, sig: int = signal.SIGTERM) -> None:
        if self.only and self.only not in name:
            return
        if signal_after is None:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=cwd)
            code, stderr = done.returncode, done.stderr + done.stdout
        else:
            # A background job inherits SIGINT ignored; a user's Ctrl-C reaches a foreground one.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 (no threads here)
            time.sleep(signal_after)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=300)
            code, stderr = proc.returncode, err + out
        if "Traceback" in stderr or sum(line.startswith("Error:") for line in stderr.splitlines()) > 1:
            self.bad += 1
            name += " **(traceback / several errors)**"
        row = (name, str(code), message(stderr).replace("|", "\\|"), disk().replace("|", "\\|"))
        self.rows.append(row)
        print(" | ".join(row), file=sys.stderr, flush=True)

    def print(self) -> None:
        print("| case | exit | message | on disk afterwards |")
        print("|---|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


def build(folder: Path) -> dict[str, Path]:
    import cv2
    import numpy as np
    from _pipeline_fixtures import export_default_model, fashion_frames, write_video

    files = {"model": export_default_model(folder / "model.onnx")}
    frames, _ = fashion_frames(120, (112, 112))
    files["clip"] = write_video(folder / "clip.avi", frames)
    long = [f for _ in range(40) for f in frames]
    files["long"] = write_video(folder / "long.avi", long)
    data = files["clip"].read_bytes()
    (folder / "half.avi").write_bytes(data[: len(data) // 2])
    files["half"] = folder / "half.avi"
    cv2.imwrite(str(folder / "same.png"), frames[0])
    files["png"] = folder / "same.png"
    png = files["png"].read_bytes()
    for name, content in (("zero.png", b""), ("truncated.png", png[: len(png) // 2]),
                          ("random.png", os.urandom(4096))):
        (folder / name).write_bytes(content)
        files[name] = folder / name
    files["bomb.png"] = png_bomb(folder / "bomb.png")
    np.save(folder / "good.npy", np.random.default_rng(0).normal(size=(4, 8, 8, 10)).astype(np.float32))
    files["npy"] = folder / "good.npy"
    (folder / "bad.pt").write_bytes(b"q\x00garbage")
    (folder / "names.bin").write_bytes(os.urandom(2048))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="Run only the cases whose name holds this.")
    args = parser.parse_args()
    table = Table(args.only)
    with tempfile.TemporaryDirectory(prefix="pg-faults-") as tmp:
        d = Path(tmp)
        f = build(d)
        model, png, clip = str(f["model"]), f["png"], f["clip"]
        run = lambda *a: command("pg-run", "--engine", model, *a)  # noqa: E731
        same = lambda p, before: lambda: f"{p.name} unchanged" if digest(p) == before else f"{p.name} CHANGED"  # noqa: E731

        # Data loss
        table.case("pg-run --source same.png --jsonl same.png", run("--source", str(png), "--jsonl", str(png)),
                   same(png, digest(png)))
        table.case("pg-run --source clip.avi --jsonl clip.avi", run("--source", str(clip), "--jsonl", str(clip)),
                   same(clip, digest(clip)))
        table.case("pg-run --source clip.avi --save-video clip.avi",
                   run("--source", str(clip), "--save-video", str(clip)), same(clip, digest(clip)))
        table.case("pg-certify --logits good.npy --window 3 --json good.npy",
                   command("pg-certify", "--logits", str(f["npy"]), "--window", "3", "--json", str(f["npy"])),
                   same(f["npy"], digest(f["npy"])))
        keep = d / "keep.jsonl"
        keep.write_text('{"earlier": true}\n')
        table.case("existing --jsonl, run fails before the first frame",
                   run("--source", str(f["zero.png"]), "--jsonl", str(keep)), same(keep, digest(keep)))
        table.case("--append to an existing --jsonl", run("--source", str(png), "--jsonl", str(keep), "--append"),
                   lambda: f"{len(keep.read_text().splitlines())} lines: the earlier one, a header, a row")
        out = d / "re"
        subprocess.run(command("pg-export", "--fp16", "--out", str(out), "--name", "m", "--no-engine",
                               "--parity-n", "2"), capture_output=True, check=True)
        table.case("re-export a name without --fp16", command(
            "pg-export", "--out", str(out), "--name", "m", "--no-engine", "--parity-n", "2"),
            lambda: ", ".join(sorted(p.name for p in out.iterdir())))

        # Half-written
        table.case("--jsonl /dev/full", run("--source", str(clip), "--jsonl", "/dev/full"), lambda: "/dev/full")
        small = d / "small"
        small.mkdir()
        mounted = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)]).returncode == 0
        if mounted:
            rows = small / "rows.jsonl"

            def whole() -> str:
                data = rows.read_bytes()
                lines = data.decode().splitlines()
                ok = data.endswith(b"\n") and all(json.loads(line) for line in lines)
                return f"{len(lines)} lines, all complete" if ok else "CUT LINE"

            table.case("--jsonl on a full 16 KiB tmpfs", run("--source", str(f["long"]), "--jsonl", str(rows)), whole)
            subprocess.run(["umount", str(small)])
        video, rows2 = d / "sig.avi", d / "sig.jsonl"
        table.case("SIGTERM to pg-run --jsonl --save-video",
                   run("--source", str(f["long"]), "--jsonl", str(rows2), "--save-video", str(video)),
                   lambda: f"{video.name} {'present' if video.exists() else 'absent'}, hidden files: "
                           f"{sorted(p.name for p in d.glob('.sig*')) or 'none'}", signal_after=8.0)
        table.case("SIGINT (Ctrl-C) to pg-run", run("--source", str(f["long"]), "--jsonl", str(d / "int.jsonl")),
                   lambda: f"{len((d / 'int.jsonl').read_text().splitlines())} complete lines",
                   signal_after=8.0, sig=signal.SIGINT)

        # Resource bombs
        nothing = lambda: "nothing written"  # noqa: E731
        table.case("metadata default_patch_px: 1e9", command(
            "pg-run", "--engine", str(with_metadata(f["model"], d / "patch.onnx", default_patch_px=10 ** 9)),
            "--source", str(png)), nothing)
        table.case("pg-run --patch-size 1000000000", run("--source", str(png), "--patch-size", "1000000000"), nothing)
        table.case("pg-bench --batch 100000", command("pg-bench", "--synthetic-map", "26x26x1000", "--batch",
                                                      "100000"), nothing)
        table.case("pg-bench --synthetic-map 26x26x1000000", command("pg-bench", "--synthetic-map",
                                                                    "26x26x1000000"), nothing)
        table.case("pg-bench --frame 100000x100000", command("pg-bench", "--synthetic-map", "26x26x10",
                                                             "--frame", "100000x100000"), nothing)
        table.case("pg-export --input-size 100000", command(
            "pg-export", "--arch", "smallbagnet", "--random-init", "--input-size", "100000", "--out",
            str(d / "big")), lambda: "no --out folder" if not (d / "big").exists() else "OUT CREATED")
        import torch

        from patchguard.models import record_for

        record = record_for("smallbagnet").to_dict()
        record["config"] = {"spatial": [[3, 1, 1000000], [3, 1, 1000000]], "pointwise": [128]}
        torch.save({"format": "patchguard-edge", "record": record, "state_dict": {}}, d / "wide.pt")
        table.case("checkpoint record with 1e6-wide layers", command(
            "pg-export", "--checkpoint", str(d / "wide.pt"), "--out", str(d / "wide")), nothing)
        table.case("ONNX with a huge ConstantOfShape", command(
            "pg-run", "--engine", str(with_huge_constant(f["model"], d / "const.onnx")), "--source", str(png)),
            nothing)

        # Tracebacks
        for label, change in (("stride: 0", {"stride": 0}), ("receptive_field: \"5\"", {"receptive_field": "5"}),
                              ("receptive_field: null", {"receptive_field": None}),
                              ("receptive_field: true", {"receptive_field": True}),
                              ("channels disagree with the graph", {"in_channels": 3, "mean": [0.5] * 3,
                                                                    "std": [0.5] * 3}),
                              ("input_size disagrees with the graph", {"input_size": [32, 32]}),
                              ("class_names a string", {"class_names": "abcdefghij"})):
            bad = with_metadata(f["model"], d / "meta.onnx", **change)
            table.case(f"metadata {label}", command("pg-run", "--engine", str(bad), "--source", str(png)), nothing)
        table.case("pg-export --checkpoint bad.pt (q\\x00garbage)", command(
            "pg-export", "--checkpoint", str(d / "bad.pt"), "--out", str(d / "o1")), nothing)
        table.case("pg-attack --checkpoint bad.pt", command("pg-attack", "--checkpoint", str(d / "bad.pt")), nothing)
        table.case("pg-export --class-names binary", command(
            "pg-export", "--class-names", str(d / "names.bin"), "--out", str(d / "o2")), nothing)
        table.case("pg-export --arch bagnet17 --random-init --num-classes 0", command(
            "pg-export", "--arch", "bagnet17", "--random-init", "--num-classes", "0", "--out", str(d / "o3")),
            nothing)
        for flag in (["--lr", "-1"], ["--lr", "nan"], ["--limit", "0"]):
            table.case(f"pg-train {' '.join(flag)}", command("pg-train", *flag, "--out", str(d / "t")), nothing)
        table.case("pg-certify --json /proc/x.json", command(
            "pg-certify", "--logits", str(f["npy"]), "--window", "3", "--json", "/proc/x.json"), nothing)
        table.case("pg-attack --json /proc/x.json", command("pg-attack", "--limit", "1", "--json", "/proc/x.json"),
                   nothing)
        api = ("import numpy as np, sys\nfrom patchguard.runtime.pipeline import Pipeline\n"
               "from patchguard.runtime.errors import PatchGuardError\n"
               f"p = Pipeline.from_engine({model!r})\n"
               "for f in (None, np.zeros(10, np.uint8)):\n"
               "    try: p(f)\n    except PatchGuardError as e: print('Error:', e, file=sys.stderr)\n"
               f"try: Pipeline.from_engine({model!r}, patch_size=5.5)\n"
               "except PatchGuardError as e: print('Error:', e, file=sys.stderr)\n")
        table.case("Python API: None frame, 1-D frame, patch_size=5.5 (PatchGuardError each)",
                   [sys.executable, "-c", api], lambda: "3 PatchGuardError lines (first shown)")

        # Silent or misleading
        for name in ("zero.png", "truncated.png", "random.png", "bomb.png"):
            table.case(f"pg-run --source {name} (the only source)", run("--source", str(f[name])), nothing)
        table.case("pg-run --source clip truncated at half", run("--source", str(f["half"]), "--jsonl",
                                                                 str(d / "half.jsonl")),
                   lambda: f"{len((d / 'half.jsonl').read_text().splitlines())} complete lines (header + rows)")
        table.case("pg-export --calib-data DIR without --int8", command(
            "pg-export", "--calib-data", "fashion-mnist", "--out", str(d / "o4")), nothing)
        table.case("pg-export --int8-flavor cpu without --int8", command(
            "pg-export", "--int8-flavor", "cpu", "--out", str(d / "o5")), nothing)
        table.case("pg-run --source \"\"", run("--source", ""), nothing)
        table.case("pg-export --name ../x", command("pg-export", "--name", "../x", "--out", str(d / "o6")),
                   lambda: "no --out folder" if not (d / "o6").exists() else "OUT CREATED")
        table.case("pg-certify --plot without matplotlib", command(
            "pg-certify", "--engine", model, "--data", "fashion-mnist", "--patch-size", "2", "--plot",
            str(d / "p.png"), block=("matplotlib",)), lambda: "no inference run, nothing written")
    table.print()
    return 1 if table.bad else 0


if __name__ == "__main__":
    sys.exit(main())
