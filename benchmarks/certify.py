"""Speed of robust-masking certification (pg runtime) against a per-window loop.

Prints ms/image for 26x26x10 (batch 2000 and batch 1) and 26x26x1000 (batch
200) maps with a 6x6 mask, deployment mode (each map's own prediction), on
maps built near the decision boundary: the share certified and the share of
patch positions that needed the exact lower bound are printed too, so the
figures are not those of easy maps. The baseline is a straightforward
per-position loop (numpy, one image at a time, as the public PatchGuard code
does it), timed on a few images only.

    python benchmarks/certify.py           # full figures
    python benchmarks/certify.py --short   # CI: seconds
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from typing import Optional

import numpy as np

from patchguard.runtime import certify, robust_masking


def boundary_maps(rng: np.random.Generator, batch: int, size: int, classes: int,
                  window: int) -> np.ndarray:
    """float32 maps (B, size, size, C): noise, a biased class and a runner-up,
    with the bias drawn so that roughly half of the maps are certified."""
    u = rng.normal(0.0, 1.0, size=(batch, size, size, classes)).astype(np.float32)
    rows = np.arange(batch)
    top = rng.integers(0, classes, size=batch)
    second = (top + 1 + rng.integers(0, classes - 1, size=batch)) % classes
    # Evidence needed to survive a window: about 2 * window^2 / size^2 of the total.
    lift = rng.uniform(-0.1, 0.9, size=batch).astype(np.float32)
    u[rows, :, :, top] += (lift * 1.2)[:, None, None]
    u[rows, :, :, second] += 0.8
    # Bright spots on the top class: its strongest windows then overlap some
    # patch positions, where the cheap sufficient test cannot decide.
    spots = rng.random((batch, size, size)) < 0.04
    u[rows, :, :, top] += spots * rng.uniform(2.0, 8.0, size=spots.shape).astype(np.float32)
    return u


def near_boundary_maps(rng: np.random.Generator, batch: int, size: int,
                       classes: int) -> np.ndarray:
    """float32 maps (B, size, size, C) of issue 10: normal cells, class 0
    ahead by a per-map U(0, 0.6) and, in a third of the maps, a rival class
    +3 in one 4x4 block, so that many maps reach the exact lower bound."""
    u = rng.normal(0.0, 1.0, size=(batch, size, size, classes)).astype(np.float32)
    u[..., 0] += rng.uniform(0.0, 0.6, size=batch).astype(np.float32)[:, None, None]
    for n in np.flatnonzero(rng.random(batch) < 1 / 3):
        i, j = (int(v) for v in rng.integers(0, size - 3, size=2))
        u[n, i : i + 4, j : j + 4, int(rng.integers(1, classes))] += 3.0
    return u


def loop_certify(u: np.ndarray, window: int, thres: float = 0.0,
                 clip: Optional[float] = None) -> np.ndarray:
    """Baseline: Algorithm 2 with one Python iteration per patch position,
    window sums recomputed for every zeroed map."""
    out = []
    for m in u.astype(np.float64):
        v = np.maximum(m, 0.0) if clip is None else np.clip(m, 0.0, clip)
        h, w, classes = v.shape
        sums = np.array([[v[i : i + window, j : j + window].sum(axis=(0, 1))
                          for j in range(w - window + 1)] for i in range(h - window + 1)])
        total = v.sum(axis=(0, 1))
        largest = sums.max(axis=(0, 1))
        evidence = np.where((total > 0) & (largest > thres * total), total - largest, total)
        y = int(evidence.argmax())
        others = np.arange(classes) != y
        ok = True
        for i in range(h - window + 1):
            for j in range(w - window + 1):
                upper = ((total - sums[i, j]) / (1 - thres))[others].max()
                vp = v[:, :, y].copy()
                vp[i : i + window, j : j + window] = 0
                t = vp.sum()
                zs = np.array([[vp[k : k + window, col : col + window].sum()
                                for col in range(w - window + 1)] for k in range(h - window + 1)])
                m0 = zs.max()
                ov = zs[max(0, i - window + 1) : i + window, max(0, j - window + 1) : j + window].max()
                lower = t - m0 if (thres == 0 or m0 > thres * t) else t - ov
                # No early exit: like the public code, every position is bounded.
                ok = ok and lower - upper > 1e-9 * max(1.0, total.max())
        out.append(ok)
    return np.array(out)


class _PositionCounter(logging.Handler):
    """Counts the positions the cheap sufficient test left open, and those
    that needed the exact lower bound (from the certifier's debug log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.positions = self.unsure = self.exact = 0

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"positions: (\d+), cheap test undecided: (\d+), exact bound: (\d+)",
                         record.getMessage())
        if found:
            self.positions += int(found.group(1))
            self.unsure += int(found.group(2))
            self.exact += int(found.group(3))


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def case(name: str, u: np.ndarray, window: int, baseline_n: int, repeats: int) -> None:
    logger = logging.getLogger("patchguard.runtime.certificate")
    counter = _PositionCounter()
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    certified = certify(u, window)
    logger.removeHandler(counter)
    fast = best_time(lambda: certify(u, window), repeats) / len(u) * 1e3
    sample = u[:baseline_n]
    slow = best_time(lambda: loop_certify(sample, window), 1) / len(sample) * 1e3
    agree = bool((loop_certify(sample, window) == certified[:baseline_n]).all())
    unsure_share = counter.unsure / max(1, counter.positions)
    exact_share = counter.exact / max(1, counter.positions)
    print(f"{name:<28} {fast:9.3f} ms/img   loop {slow:9.1f} ms/img   x{slow / fast:8.0f}   "
          f"certified {certified.mean():5.1%}   positions left by cheap test {unsure_share:5.1%}, "
          f"exact bound {exact_share:6.2%}   "
          f"loop agrees on {len(sample)}: {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="small batches, one repeat (CI)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    big, huge, repeats = (2000, 200, 3) if not args.short else (200, 10, 1)
    print(f"6x6 mask, T=0, no clip, deployment mode; best of {repeats}")
    baseline = 4 if not args.short else 1
    for name, maps in (("", lambda n, c: boundary_maps(rng, n, 26, c, 6)),
                       ("near ", lambda n, c: near_boundary_maps(rng, n, 26, c))):
        case(f"{name}26x26x10 batch {big}", maps(big, 10), 6, baseline, repeats)
        single = maps(50, 10)
        times = [best_time(lambda m=m: certify(m[None], 6), 3) for m in single]
        print(f"{name + '26x26x10 batch 1':<28} {np.median(times) * 1e3:9.3f} ms/img "
              f"(median over {len(single)} maps)")
        case(f"{name}26x26x1000 batch {huge}", maps(huge, 1000), 6, min(2, baseline), repeats)
    u = boundary_maps(rng, big, 26, 10, 6)
    t = best_time(lambda: robust_masking(u, 6), repeats) / big * 1e3
    print(f"{'robust_masking 26x26x10':<28} {t:9.3f} ms/img")
    labels = robust_masking(u, 6)[0]
    t = best_time(lambda: certify(u, 6, thres=0.1, clip=5.0, labels=labels), repeats) / big * 1e3
    share = certify(u, 6, thres=0.1, clip=5.0, labels=labels).mean()
    print(f"{'T=0.1 c_h=5 labels 26x26x10':<28} {t:9.3f} ms/img   certified {share:5.1%}")


if __name__ == "__main__":
    main()
