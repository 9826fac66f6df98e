"""PyTorch rebuild of dlib's face descriptor ResNet (dlib_face_recognition_resnet_model_v1).

The network definition (from dlib's dnn_face_recognition_ex.cpp, rewritten here as data):

    stem:   con 32 7x7/2 (pad 0) -> affine -> relu -> max_pool 3x3/2 (pad 0)
    level4: 3 x ares(32)                                    35x35
    level3: ares_down(64),  3 x ares(64)                    17x17
    level2: ares_down(128), 2 x ares(128)                   8x8
    level1: ares_down(256), 2 x ares(256)                   4x4 (block gives 3x3, zero-padded)
    level0: ares_down(256)                                  2x2 (block gives 1x1, zero-padded)
    head:   global average -> fc 256->128 (no bias)

    ares(x)      = relu(x + affine(con3x3/1(relu(affine(con3x3/1(x))))))
    ares_down(x) = relu(avg_pool2x2/2(x) + affine(con3x3/1(relu(affine(con3x3/2(x))))))

dlib's add_prev zero-pads the smaller operand (extra channels, and rows/columns at the
bottom/right) instead of requiring equal shapes; that is reproduced exactly below.

Everything linear is folded into a convolution, so the converted graph is only CONV_2D,
ADD (with fused RELU), MAX_POOL_2D, PAD and a final RESHAPE, all taken by XNNPACK in one
partition, in fp32 and in int8:
* each `affine_` (per-channel gamma, beta) folds into the conv before it;
* the input normalisation (rgb - mean) / 256 folds into the stem conv. That fold is exact only
  because the stem conv has no padding (a padded border would see 0, not the mean).
* each shortcut's avg_pool 2x2/2 + zero channel padding is a fixed 2x2/2 conv;
* avg_pool_everything + fc_no_bias is one conv over the final 2x2 map.
So the model takes raw RGB pixel values 0..255, which also makes int8 input quantisation
(scale 1, integer pixels) exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.dlib_dat import DlibNet, Layer, load

CHIP_SIZE = 150
EMBED_DIM = 128


@dataclass(frozen=True)
class ConvSpec:
    weight: np.ndarray  # (out, in, kh, kw), affine already folded in
    bias: np.ndarray  # (out,)
    stride: int
    padding: int


def _fold(con: Layer, aff: Layer) -> ConvSpec:
    if aff.kind != "affine" or aff.fields.get("mode") != 0:
        raise ValueError(f"expected a per-channel (CONV_MODE) affine after a con, got {aff.kind}")
    gamma = aff.weights["gamma"].reshape(-1).astype(np.float64)
    beta = aff.weights["beta"].reshape(-1).astype(np.float64)
    w = con.weights["filters"].astype(np.float64) * gamma[:, None, None, None]
    b = con.weights["biases"].astype(np.float64) * gamma + beta
    if con.fields["stride_y"] != con.fields["stride_x"] or con.fields["padding_y"] != con.fields["padding_x"]:
        raise ValueError("non-square stride/padding is not used by this network")
    return ConvSpec(w, b, int(con.fields["stride_y"]), int(con.fields["padding_y"]))


def expected_kinds(blocks: list[bool]) -> list[str]:
    """The serialised layer sequence this topology implies (True = a downsampling block)."""
    kinds = ["input_rgb_image_sized", "con", "affine", "relu", "max_pool"]
    for down in blocks:
        kinds += ["tag_or_skip", "con", "affine", "relu", "con", "affine"]
        if down:
            kinds += ["tag_or_skip", "tag_or_skip", "avg_pool"]  # tag2, skip1, then pool the input
        kinds += ["add_prev", "relu"]
    return [*kinds, "avg_pool", "fc"]


@dataclass(frozen=True)
class Plan:
    stem: ConvSpec
    blocks: list[tuple[ConvSpec, ConvSpec, bool]]
    fc: np.ndarray  # (256, 128): y = x @ W
    mean_rgb: tuple[float, float, float]


def plan_from_dat(net: DlibNet) -> Plan:
    """Pair convs with their affines, group them into residual blocks, and check the wiring."""
    layers = [layer for layer in net.layers if layer.kind != "input_rgb_image_sized"]
    inp = net.layers[0]
    if inp.kind != "input_rgb_image_sized" or (inp.fields["nr"], inp.fields["nc"]) != (CHIP_SIZE, CHIP_SIZE):
        raise ValueError("expected a 150x150 input_rgb_image_sized input layer")
    convs: list[ConvSpec] = []
    for i, layer in enumerate(layers):
        if layer.kind == "con":
            convs.append(_fold(layer, layers[i + 1]))
    if len(convs) % 2 != 1:
        raise ValueError(f"{len(convs)} convs: expected a stem plus pairs")
    blocks = [(convs[i], convs[i + 1], convs[i].stride == 2) for i in range(1, len(convs), 2)]
    got = [layer.kind for layer in net.layers]
    want = expected_kinds([b[2] for b in blocks])
    if got != want:
        raise ValueError("serialised layer sequence does not match the dlib face ResNet topology")
    pool = net.of_kind("max_pool")[0].fields
    if (pool["nr"], pool["stride_y"], pool["padding_y"]) != (3, 2, 0):
        raise ValueError(f"unexpected stem max_pool {pool}")
    for p in net.of_kind("avg_pool")[:-1]:
        if (p.fields["nr"], p.fields["stride_y"], p.fields["padding_y"]) != (2, 2, 0):
            raise ValueError(f"unexpected shortcut avg_pool {p.fields}")
    if net.of_kind("avg_pool")[-1].fields["nr"] != 0:
        raise ValueError("expected avg_pool_everything before the fc")
    fc = net.of_kind("fc")[0]
    if fc.fields["bias_mode"] != 1:
        raise ValueError("expected fc_no_bias")
    mean = (inp.fields["avg_red"], inp.fields["avg_green"], inp.fields["avg_blue"])
    return Plan(convs[0], blocks, fc.weights["weights"], mean)


def _conv(spec: ConvSpec) -> nn.Conv2d:
    out_c, in_c, k, _ = spec.weight.shape
    conv = nn.Conv2d(in_c, out_c, k, stride=spec.stride, padding=spec.padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(spec.weight.astype(np.float32)))
        assert conv.bias is not None  # created with bias=True
        conv.bias.copy_(torch.from_numpy(spec.bias.astype(np.float32)))
    return conv


def _pad_bottom_right(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """dlib's add_prev zero-fills the smaller operand's missing rows/columns at the bottom/right."""
    dh, dw = h - int(y.shape[2]), w - int(y.shape[3])
    if dh < 0 or dw < 0:
        raise ValueError("block output larger than its shortcut: not a pattern of this network")
    return F.pad(y, (0, dw, 0, dh)) if dh or dw else y


def _shortcut_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """avg_pool 2x2/2 plus dlib's zero channel padding, as one fixed 2x2/2 conv.

    Weight 0.25 from input channel i to output channel i, 0 elsewhere (so output channels
    >= c_in are exactly 0, as dlib's add pads them). Written as a conv because in int8 every
    alternative costs more: AVERAGE_POOL_2D and the SLICE/CONCATENATION/QUANTIZE a channel
    concat needs are not taken by the XNNPACK delegate (the graph split into 9 partitions), and
    F.pad on the channel axis makes litert-torch emit ~20 TRANSPOSEs. The conv adds ~4.6 M MACs
    to the network's 271 M.
    """
    conv = nn.Conv2d(c_in, c_out, 2, stride=2, bias=False)
    w = torch.zeros(c_out, c_in, 2, 2)
    idx = torch.arange(c_in)
    w[idx, idx] = 0.25
    with torch.no_grad():
        conv.weight.copy_(w)
    conv.requires_grad_(False)
    return conv


class _Block(nn.Module):
    def __init__(self, c1: ConvSpec, c2: ConvSpec, down: bool) -> None:
        super().__init__()
        self.conv1 = _conv(c1)
        self.conv2 = _conv(c2)
        self.shortcut = _shortcut_conv(c1.weight.shape[1], c2.weight.shape[0]) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        short = self.shortcut(x) if self.shortcut is not None else x
        y = _pad_bottom_right(y, int(short.shape[2]), int(short.shape[3]))
        return F.relu(y + short)  # converts to one ADD with fused RELU


def _final_size(plan: Plan) -> int:
    """Spatial size reaching avg_pool_everything (2 for a 150 chip)."""
    s = (CHIP_SIZE - plan.stem.weight.shape[2]) // plan.stem.stride + 1
    s = (s - 3) // 2 + 1  # max_pool 3x3/2
    for c1, _, down in plan.blocks:
        if down:  # dlib's add keeps the larger of the block (3x3/2) and shortcut (2x2/2) maps
            s = max((s - c1.weight.shape[2]) // c1.stride + 1, (s - 2) // 2 + 1)
    return int(s)


class DlibFaceResNet(nn.Module):
    """NCHW float input of raw RGB values 0..255 (normalisation folded into the stem)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        stem = plan.stem
        mean = np.asarray(plan.mean_rgb, np.float64)
        w = stem.weight / 256.0
        # (x - m)/256 conv W + b  ==  x conv (W/256) + (b - sum W/256 * m), exact with zero padding.
        b = stem.bias - np.einsum("oikl,i->o", w, mean)
        if stem.padding != 0:
            raise ValueError("cannot fold the input mean into a padded stem conv")
        self.stem = _conv(ConvSpec(w, b, stem.stride, stem.padding))
        self.blocks = nn.ModuleList(_Block(c1, c2, down) for c1, c2, down in plan.blocks)
        # avg_pool_everything + fc_no_bias as one valid conv over the whole final map with the fc
        # weights / (k*k) at every tap: one CONV_2D in TFLite (int8 AVERAGE_POOL_2D is not
        # delegated to XNNPACK, and a separate pool would add a requantisation step).
        k = _final_size(plan)
        n_in, n_out = plan.fc.shape
        head = np.broadcast_to(plan.fc.T[:, :, None, None] / (k * k), (n_out, n_in, k, k))
        self.head = nn.Conv2d(n_in, n_out, k, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(head, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        y: torch.Tensor = torch.flatten(self.head(x), 1)
        return y


class NHWCWrapper(nn.Module):
    """What gets converted: float32 [N,150,150,3] RGB 0..255 in, [N,128] float32 out (not normalised)."""

    def __init__(self, net: DlibFaceResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.net(x.permute(0, 3, 1, 2))
        return y


def build_from_dat(path: Path) -> DlibFaceResNet:
    return DlibFaceResNet(plan_from_dat(load(path))).eval()


def descriptors(model: nn.Module, chips: np.ndarray, batch: int = 32) -> np.ndarray:
    """Raw (un-normalised) descriptors for uint8/float RGB NHWC chips, via the NHWC wrapper."""
    wrapper = model if isinstance(model, NHWCWrapper) else NHWCWrapper(model)  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(np.ascontiguousarray(chips[i : i + batch], dtype=np.float32))
            out.append(wrapper(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)
