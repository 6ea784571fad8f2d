"""Speed of what one BagNet pass gives besides robust masking, in ms per image.

Robust masking (prediction + certificate) against feature-space double
masking (prediction + certificate, k masks per axis), provable detection
(labels, alerts, certified detection) and top-3 certificates, per patch
window, on real local logits (``--logits``, e.g. those ``pg-certify
--save-logits`` wrote for the Fashion-MNIST test set) or on random maps near
the decision boundary (24x24x10, like the bundled model's).

    python benchmarks/feature_defenses.py --logits out/full/logits.npy --windows 6 7 9
    python benchmarks/feature_defenses.py --short      # CI: seconds
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from patchguard.runtime import certify, predict
from patchguard.runtime.detection import certify_detection, detect


def boundary_maps(rng: np.random.Generator, batch: int, size: int, classes: int) -> np.ndarray:
    """float32 maps with a biased class, a runner-up and bright spots."""
    u = rng.normal(0.0, 1.0, size=(batch, size, size, classes)).astype(np.float32)
    rows = np.arange(batch)
    top = rng.integers(0, classes, size=batch)
    u[rows, :, :, top] += rng.uniform(0.0, 1.5, size=batch).astype(np.float32)[:, None, None]
    spots = rng.random((batch, size, size)) < 0.04
    u[rows, :, :, top] += spots * rng.uniform(2.0, 8.0, size=spots.shape).astype(np.float32)
    return u


def timed(step: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logits", help="local logits (N, H, W, C) .npy")
    parser.add_argument("--limit", type=int, default=None, help="first N maps only")
    parser.add_argument("--windows", type=int, nargs="+", default=[6, 7, 9], help="patch windows (cells)")
    parser.add_argument("--masks-per-axis", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--short", action="store_true", help="200 random maps, one window")
    args = parser.parse_args()
    if args.logits:
        u = np.load(args.logits)
        source = args.logits
    else:
        u = boundary_maps(np.random.default_rng(0), 200 if args.short else 2000, 24, 10)
        source = "random boundary maps"
    if args.limit:
        u = u[: args.limit]
    windows = args.windows[-1:] if args.short else args.windows
    n = u.shape[0]
    print(f"{n} maps {u.shape[1]}x{u.shape[2]}x{u.shape[3]} ({source}), ms per image")
    for w in windows:
        mask = timed(lambda: (predict(u, w), certify(u, w)), n)
        line = f"window {w}x{w}: mask {mask:.3f} ms"
        for k in args.masks_per_axis:
            double = timed(lambda: certify(u, w, defense="double", masks_per_axis=k), n)
            line += f" | double k={k} {double:.3f} ms"
        det = timed(lambda: (detect(u, w, tau=0.8), certify_detection(u, w, tau=0.8)), n)
        top = timed(lambda: certify(u, w, top_k=3), n)
        print(line + f" | detection {det:.3f} ms | top-3 certificate {top:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
