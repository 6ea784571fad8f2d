"""The bundled PatchCleanser CNN, exported by our exporter, and a double-masking oracle for attacks."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def export_cleanser(folder: Path) -> Path:
    """``folder/cleanser.onnx``: the bundled checkpoint through export_onnx (no parity run)."""
    from patchguard.export.onnx import export_onnx
    from patchguard.export.onnxfile import save_onnx
    from patchguard.models import WEIGHTS

    model, record = WEIGHTS["fashion_mnist_cleanser"].load()
    return save_onnx(export_onnx(model, record), folder / "cleanser.onnx")


def naive_double_masking(table: np.ndarray, classes: int) -> int:
    """PatchCleanser's Algorithm 1 read literally from a full two-mask table (M, M)."""
    first = [int(table[i, i]) for i in range(len(table))]
    if len(set(first)) == 1:
        return first[0]
    votes = [first.count(c) for c in range(classes)]
    majority = votes.index(max(votes))
    for i, label in enumerate(first):
        if label != majority and all(int(table[i, j]) == label for j in range(len(table))):
            return label
    return majority


def certified_test_images(runner, record, want: int, limit: int = 2000):
    """The first ``want`` Fashion-MNIST test images whose true label the runner certifies:
    (pixels (n, 28, 28) float in [0, 1], labels (n,), their test-set indices)."""
    from patchguard.runtime.datasets import load_fashion_mnist
    from patchguard.runtime.preprocess import normalize

    images, labels = load_fashion_mnist("test")
    found: list[int] = []
    for start in range(0, limit, 64):
        batch = slice(start, start + 64)
        results = runner.run(normalize(images[batch], record), labels=labels[batch])
        found += [start + i for i, r in enumerate(results) if r.certified]
        if len(found) >= want:
            break
    index = np.array(found[:want])
    return images[index].astype(np.float32) / 255.0, labels[index], index


def pgd_patch(model, record, pixels: np.ndarray, label: int, patch: int, masks, steps: int = 20,
              seed: int = 0) -> np.ndarray:
    """A patch content (patch, patch) in [0, 1] that maximises the one-mask views' loss at random
    positions (PGD with sign steps on the PyTorch model the ONNX file was exported from)."""
    import torch

    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 threads run ~20x slower than 1
    try:
        return _pgd(model, record, pixels, label, patch, masks, steps, rng)
    finally:
        torch.set_num_threads(threads)


def _pgd(model, record, pixels, label, patch, masks, steps, rng) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    mean, std = float(record.mean[0]), float(record.std[0])
    keep = torch.from_numpy(masks.keep)[:, None]              # (M, 1, H, W)
    fill = float(record.defense.fill)
    delta = torch.from_numpy(rng.uniform(0, 1, (patch, patch)).astype(np.float32)).requires_grad_()
    base = torch.from_numpy(pixels)
    h, w = pixels.shape
    for _ in range(steps):
        tops = rng.integers(0, h - patch + 1, size=8)
        lefts = rng.integers(0, w - patch + 1, size=8)
        frames = []
        for top, left in zip(tops, lefts):
            pad = F.pad(delta, (left, w - patch - left, top, h - patch - top))
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[top : top + patch, left : left + patch] = True
            frames.append(torch.where(inside, pad, base))
        x = (torch.stack(frames)[:, None] - mean) / std          # (8, 1, H, W)
        views = torch.where(keep[None], x[:, None], torch.tensor(fill)).reshape(-1, 1, h, w)
        loss = F.cross_entropy(model(views), torch.full((len(views),), int(label)))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += 0.1 * grad.sign()
            delta.clamp_(0, 1)
    return delta.detach().numpy()


def attacked_labels(runner, record, pixels: np.ndarray, contents) -> np.ndarray:
    """Double-masking labels (positions,) of ``pixels`` with a patch pasted at every position,
    row-major, each recomputed from scratch through the runner's backend. ``contents``: one
    (ph, pw) array for every position, or a list cycled over the positions."""
    from patchguard.runtime.preprocess import normalize

    contents = [contents] if isinstance(contents, np.ndarray) else list(contents)
    ph, pw = contents[0].shape
    h, w = pixels.shape
    frames = []
    for top in range(h - ph + 1):
        for left in range(w - pw + 1):
            frame = pixels.copy()
            frame[top : top + ph, left : left + pw] = contents[len(frames) % len(contents)]
            frames.append(frame)
    # normalize() takes uint8-scale images; float pixels x in [0, 1] scale the same way.
    x = normalize(np.stack(frames) * np.float32(255.0), record)
    out = []
    for start in range(0, len(x), 96):
        out += [r.label for r in runner.run(x[start : start + 96])]
    return np.array(out)
