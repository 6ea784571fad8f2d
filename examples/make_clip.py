"""Make a short video from a folder of images: the stand-in camera of the demo.

Usage: python examples/make_clip.py SAMPLE_DIR OUT.avi [--frames 120] [--size 112]
Each image is upscaled to SIZE x SIZE and shown for one frame (MJPG in AVI,
which every OpenCV build can read back); OUT.labels.txt holds the
true class index of each frame.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    paths = sorted(p for p in args.folder.rglob("*.png"))
    if not paths:
        print(f"error: no PNG images under {args.folder}", file=sys.stderr)
        return 1
    # Interleave the classes so the clip does not show one class for 20 frames.
    paths.sort(key=lambda p: (p.stem, p.parent.name))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (args.size, args.size))
    if not writer.isOpened():
        print(f"error: cannot write {args.out}", file=sys.stderr)
        return 1
    labels = []
    for i in range(args.frames):
        path = paths[i % len(paths)]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        writer.write(cv2.resize(image, (args.size, args.size), interpolation=cv2.INTER_NEAREST))
        # Class folders are named "<index>-<name>", as in the bundled sample.
        labels.append(path.parent.name.split("-", 1)[0])
    writer.release()
    args.out.with_suffix(".labels.txt").write_text("\n".join(labels) + "\n")
    print(f"wrote {args.out}: {args.frames} frames of {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
