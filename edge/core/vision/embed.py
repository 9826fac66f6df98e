"""Face descriptors on the device: aligned RGB chips in, L2-normalised vectors out.

The chip size and template, the descriptor size and the input normalisation all come from the
model (its input/output shapes) and its manifest entry (`template`, `preprocess`), so an imported
model (`lfr-edge models import`) runs with no code change. The shipped model is dlib's face
ResNet rebuilt by models/build_embedder.py: NHWC [1,150,150,3] raw RGB 0..255, normalisation
folded into its first conv, 128-d out. Its int8 input has scale 1 and zero point -128, so
quantising a uint8 pixel is exactly `pixel - 128`, i.e. flipping the top bit; that fast path is
taken whenever the model says so. Any other model's normalisation ((pixel - mean) / std per
channel, RGB or BGR) and quantisation are one 256-entry table per channel, built once.

One invoke per chip, at the converted batch size of 1: the dlib graph ends in a RESHAPE to
[1,128] and XNNPACK refuses to resize it, and batching was no faster anyway (measured on x86 with
ai-edge-litert before that RESHAPE existed, int8: 2.96 ms/chip at batch 1, 3.04 at batch 8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.inference import TFLiteModel, load_model
from edge.core.types import F32, U8
from edge.core.vision.align import ChipTemplate, parse_template

# The shipped dlib model's contract; other models bring their own in the manifest.
CHIP_SIZE = 150
EMBED_DIM = 128


class ChannelOrder(str, enum.Enum):
    RGB = "rgb"
    BGR = "bgr"


@dataclass(frozen=True, slots=True)
class Preprocess:
    """Model input value of a pixel byte: (byte - mean[c]) / std[c], channel c in `channels` order."""

    channels: ChannelOrder = ChannelOrder.RGB
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def identity(self) -> bool:
        return self == Preprocess()

    def to_manifest(self) -> dict[str, Any]:
        return {"channels": self.channels.value, "mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_manifest(raw: Any, where: str) -> Preprocess:
        """A manifest `preprocess` block; absent means raw RGB bytes (normalisation in the model)."""
        if raw is None:
            return Preprocess()
        if not isinstance(raw, dict):
            raise InputError(f"{where}: preprocess must be an object with channels, mean, std")
        try:
            order = ChannelOrder(str(raw.get("channels", "rgb")).lower())
        except ValueError:
            raise InputError(f"{where}.channels: {raw.get('channels')!r} is not rgb or bgr") from None
        return Preprocess(order, _triple(raw.get("mean", [0, 0, 0]), f"{where}.mean"),
                          _triple(raw.get("std", [1, 1, 1]), f"{where}.std", positive=True))  # fmt: skip

    def table(self) -> F32:
        """(256, 3) float32: model value per byte (rows) and model channel (columns)."""
        b = np.arange(256, dtype=np.float64)[:, None]
        out: F32 = ((b - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)
        return out


def _triple(v: Any, where: str, positive: bool = False) -> tuple[float, float, float]:
    try:
        vals = [float(x) for x in v]
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected three numbers, got {v!r}") from None
    if len(vals) != 3 or not all(np.isfinite(vals)) or (positive and min(vals) <= 0.0):
        raise InputError(f"{where}: expected three finite numbers{' > 0' if positive else ''}, got {v!r}")
    return vals[0], vals[1], vals[2]


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    """What a model expects and gives: chip template and size, input normalisation, descriptor size."""

    template: ChipTemplate
    chip_size: int
    dim: int
    preprocess: Preprocess

    @staticmethod
    def of(model: TFLiteModel) -> EmbedderSpec:
        """Shapes from the model, template and normalisation from its manifest entry."""
        shape = model.input_shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise InputError(f"{model.path}: embedder input {list(shape)} is not a square NHWC [1,S,S,3] chip")
        out_shape = tuple(int(v) for v in model.outputs[0]["shape"])
        if len(out_shape) != 2 or out_shape[-1] < 2:
            raise InputError(f"{model.path}: embedder output {list(out_shape)} is not [1, D]")
        size, dim = int(shape[1]), int(out_shape[-1])
        raw: dict[str, Any] = model.entry.raw if model.entry is not None else {}
        where = f"MANIFEST.json {model.id}"
        if "template" in raw:
            template = parse_template(str(raw["template"]), f"{where}.template")
        elif size == CHIP_SIZE:
            template = ChipTemplate.DLIB150  # the shipped contract, from before entries named it
        else:
            raise InputError(f"{where}: a {size}px embedder needs a 'template' in its manifest entry")
        for key, got in (("chip_size", size), ("dim", dim)):
            if key in raw and int(raw[key]) != got:
                raise InputError(f"{where}.{key}: {raw[key]} but the model file has {got}")
        return EmbedderSpec(template, size, dim, Preprocess.from_manifest(raw.get("preprocess"), f"{where}.preprocess"))


class Embedder:
    """Wraps a loaded embedder model; `embed` is the only per-frame call."""

    def __init__(self, model: TFLiteModel, *, spec: EmbedderSpec | None = None, flip: bool = False) -> None:
        spec = spec or EmbedderSpec.of(model)
        if model.input_shape[0] != 1:
            model.resize_batch(1)  # see module docstring: batch 1 is the only size that works
        self.model = model
        self.spec = spec
        self.template = spec.template
        self.chip_size = spec.chip_size
        self.dim = spec.dim
        # Test-time flip: each face is described by the mean of its chip's and its mirror's
        # descriptors (the embedder's manifest scoring block decides; measured in docs/BENCHMARKS.md).
        self.flip = flip
        self._in_q = model.input_quant[0]
        self._out_q = model.output_quant[0]
        in_dtype = np.dtype(self._in_q.dtype)
        s = self.chip_size
        # Preallocated so the per-chip path makes no input allocations.
        self._buf: npt.NDArray[Any] = np.zeros((1, s, s, 3), in_dtype)
        plain = spec.preprocess.identity
        self._xor_path = plain and in_dtype == np.int8 and self._in_q.scale == 1.0 and self._in_q.zero_point == -128
        self._float_path = plain and self._in_q.scale == 0.0
        self._bgr = spec.preprocess.channels is ChannelOrder.BGR
        self._swap: U8 = np.zeros((s, s, 3), np.uint8)
        self._lut: npt.NDArray[Any] = self._in_q.quantize(spec.preprocess.table())
        # OpenCV's LUT takes one table per channel for these dtypes: ~25 us for a 112 px chip
        # against ~220 us for numpy's gather.
        self._lut_cv = self._lut.reshape(1, 256, 3) if self._lut.dtype in (np.uint8, np.int8, np.float32) else None
        self._ch = np.arange(3)

    @classmethod
    def from_config(
        cls, models_dir: Path | None = None, model_id: str = "dlib_resnet_v1_int8", num_threads: int = 2
    ) -> Embedder:
        """Load a manifest model by id (sha256-checked) and wrap it with its scoring's flip setting."""
        from edge.core.vision.scoring import load_scoring

        flip = load_scoring(model_id, models_dir).flip
        return cls(load_model(model_id, models_dir, num_threads=num_threads), flip=flip)

    def _fill(self, chip: U8) -> None:
        if self._xor_path:
            # uint8 p -> int8 (p - 128): same bits with the sign bit flipped; no float round trip.
            np.bitwise_xor(chip, np.uint8(0x80), out=self._buf.view(np.uint8)[0])
        elif self._float_path:
            self._buf[0] = chip  # float32 model: raw pixel values, the model normalises
        else:
            src = cv2.cvtColor(chip, cv2.COLOR_RGB2BGR, dst=self._swap) if self._bgr else chip
            if self._lut_cv is not None:
                cv2.LUT(src, self._lut_cv, dst=self._buf[0])  # normalise + quantise in one pass
            else:
                self._buf[0] = self._lut[src, self._ch]

    def embed(self, chips: U8) -> F32:
        """(N,S,S,3) uint8 RGB chips (S = chip_size) -> (N,dim) float32, each row L2-normalised."""
        if chips.ndim == 3:
            chips = chips[None]
        s = self.chip_size
        if chips.ndim != 4 or chips.shape[1:] != (s, s, 3):
            raise InputError(f"chips must be (N,{s},{s},3), got {chips.shape}")
        if chips.dtype != np.uint8:
            raise InputError(f"chips must be uint8 RGB, got {chips.dtype}")
        out = self._describe(chips)
        if self.flip:
            # Both views normalised before the mean, so neither outweighs the other.
            out += self._describe(np.ascontiguousarray(chips[:, :, ::-1]))
            _normalise(out)
        return out

    def _describe(self, chips: U8) -> F32:
        n = int(chips.shape[0])
        out = np.empty((n, self.dim), np.float32)
        for i in range(n):
            self._fill(chips[i])
            raw = self.model.invoke(self._buf)[0]
            out[i] = self._out_q.dequantize(raw).reshape(-1)
        _normalise(out)
        return out


def _normalise(rows: F32) -> None:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    # A zero descriptor cannot occur for a real chip; guard anyway rather than emit NaN.
    np.maximum(norms, np.float32(1e-12), out=norms)
    rows /= norms
