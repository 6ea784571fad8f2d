"""The BagNet family: weight compatibility with the official ``bagnets``
package, local-logit map sizes, and receptive fields measured by gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from patchguard.models import SmallBagNet, bagnet9, bagnet17, bagnet33
from patchguard.models.registry import small_record

BUILDERS = {"bagnet9": bagnet9, "bagnet17": bagnet17, "bagnet33": bagnet33}
# models/bagnet.py, after the official bagnets package: blocks per stage with a 3x3 middle conv, and r.
KERNEL3 = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}
RECEPTIVE_FIELD = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33}


@pytest.fixture(scope="module")
def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def bagnet(request) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    return request.param, BUILDERS[request.param](num_classes=1000).eval()


def official_shapes(arch: str, resnet50: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The official BagNet's state dict shapes, derived from torchvision's ResNet-50
    (same key naming) and the differences models/bagnet.py, after the official bagnets package lists."""
    shapes = dict(resnet50)
    shapes["conv1.weight"] = (64, 3, 1, 1)  # 1x1 stem instead of 7x7
    shapes["conv2.weight"] = (64, 64, 3, 3)  # extra unpadded 3x3 stem conv
    for stage, k3 in enumerate(KERNEL3[arch], start=1):
        block = 0
        while f"layer{stage}.{block}.conv2.weight" in shapes:
            out, cin, _, _ = shapes[f"layer{stage}.{block}.conv2.weight"]
            kernel = 3 if block < k3 else 1
            shapes[f"layer{stage}.{block}.conv2.weight"] = (out, cin, kernel, kernel)
            block += 1
    return shapes


def test_state_dict_matches_official(bagnet, resnet50_shapes):
    arch, model = bagnet
    expected = official_shapes(arch, resnet50_shapes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 321
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert got["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert got["fc.weight"] == (1000, 2048)
    assert model.bn1.momentum == 0.001


def test_state_dict_key_order_matches_official(bagnet):
    # The official module registers conv1, conv2, bn1, then the stages, then fc.
    keys = list(bagnet[1].state_dict())
    assert keys[:3] == ["conv1.weight", "conv2.weight", "bn1.weight"]
    assert keys[-2:] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("size, cells", [(224, {"bagnet9": 27, "bagnet17": 26, "bagnet33": 24}),
                                         (192, {"bagnet9": 23, "bagnet17": 22, "bagnet33": 20})])
def test_local_logit_map_size(bagnet, size, cells):
    arch, model = bagnet
    with torch.no_grad():
        u = model(torch.randn(1, 3, size, size))
    assert tuple(u.shape) == (1, cells[arch], cells[arch], 1000)


def gradient_support(model: torch.nn.Module, channels: int, size: int, cells: list[tuple[int, int]]):
    """For each output cell, the (rows, cols) bounding box and count of input
    pixels with a non-zero gradient of the cell's logits (double precision)."""
    model = model.double().eval()
    x = torch.randn(len(cells), channels, size, size, dtype=torch.float64, requires_grad=True)
    u = model(x)
    # Each batch item asks about one cell; eval-mode items are independent.
    weights = torch.randn(u.shape[-1], dtype=torch.float64)
    total = sum((u[k, i, j] * weights).sum() for k, (i, j) in enumerate(cells))
    (grad,) = torch.autograd.grad(total, x)
    support = []
    for k in range(len(cells)):
        nonzero = grad[k].abs().sum(dim=0) != 0
        rows = nonzero.any(dim=1).nonzero().flatten()
        cols = nonzero.any(dim=0).nonzero().flatten()
        support.append((int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()), int(nonzero.sum())))
    return support


def assert_receptive_field(model, channels, size, r, s):
    cells = [(1, 1), (1, 2), (2, 1)]
    support = gradient_support(model, channels, size, cells)
    for (i, j), (top, bottom, left, right, count) in zip(cells, support):
        # Exactly an r x r square: bounding box r x r and every pixel inside it non-zero.
        assert (bottom - top + 1, right - left + 1) == (r, r)
        assert count == r * r
        assert (top, left) == (i * s, j * s)
    assert support[1][2] - support[0][2] == s  # neighbouring columns s px apart
    assert support[2][0] - support[0][0] == s  # neighbouring rows s px apart


def test_bagnet_receptive_field(bagnet):
    arch, model = bagnet
    r = RECEPTIVE_FIELD[arch]
    # 3 cells per axis need 2 s + r pixels; 7 more leave pixels no cell sees.
    assert_receptive_field(copy.deepcopy(model), 3, 2 * 8 + r + 7, r, 8)


def receptive_field_from_layers(spatial: list[list[int]]) -> tuple[int, int]:
    """r and s of a stack of unpadded convs, from first principles: each layer
    widens the field by (k - 1) times the product of the strides before it."""
    r, jump = 1, 1
    for kernel, stride, _ in spatial:
        r += (kernel - 1) * jump
        jump *= stride
    return r, jump


@pytest.mark.parametrize("spatial", [
    [[3, 1, 32], [3, 1, 64]],  # the bundled default: r = 5, s = 1
    [[3, 2, 8], [3, 1, 8], [5, 2, 8]],  # strided: r = 1 + 2 + 4 + 8 = 15, s = 4
    [[1, 1, 4]],  # r = 1: every cell is one pixel
])
def test_small_bagnet_receptive_field(spatial):
    torch.manual_seed(1)
    model = SmallBagNet(in_channels=1, num_classes=10, spatial=spatial, pointwise=(16,))
    r, s = receptive_field_from_layers(spatial)
    assert model.receptive_field == (r, s)
    record = small_record({"spatial": spatial, "pointwise": [16]})
    assert (record.receptive_field, record.stride) == (r, s)
    assert_receptive_field(model, 1, 2 * s + r + s, r, s)


def test_small_bagnet_map_size_matches_record():
    record = small_record()
    model = SmallBagNet(spatial=record.config["spatial"], pointwise=record.config["pointwise"]).eval()
    with torch.no_grad():
        u = model(torch.randn(2, 1, 28, 28))
    assert tuple(u.shape) == (2, *record.map_size, 10)


def test_forward_is_fc_per_cell(bagnet):
    # Local logits are fc applied at every feature cell: their mean over cells
    # equals fc of the average-pooled features (the official classifier).
    _, model = bagnet
    with torch.no_grad():
        x = torch.randn(1, 3, 8 * 2 + 33, 8 * 2 + 33)
        features = model.features(x)
        u = model(x)
        pooled = model.fc(features.mean(dim=(2, 3)))
    torch.testing.assert_close(u.mean(dim=(1, 2)), pooled, rtol=1e-4, atol=1e-4)
