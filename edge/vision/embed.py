"""Face descriptors on the device: aligned 150x150 RGB chips in, L2-normalised 128-d vectors out.

The model is dlib's face ResNet rebuilt and converted by models/build_embedder.py. Its input
contract (models/MANIFEST.json): NHWC [1,150,150,3] raw RGB pixel values 0..255, normalisation
folded into the first conv. The int8 model's input is int8 with scale 1 and zero point -128, so
quantising a uint8 pixel is exactly `pixel - 128`, i.e. flipping the top bit; that fast path is
taken whenever the model says so, anything else goes through the generic Quant helpers.

One invoke per chip, at the converted batch size of 1: the graph ends in a RESHAPE to [1,128]
and XNNPACK refuses to resize it, and batching was no faster anyway (measured on x86 with
ai-edge-litert before that RESHAPE existed, int8: 2.96 ms/chip at batch 1, 3.04 at batch 8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import InputError
from edge.inference import TFLiteModel, load_model
from edge.types import F32, U8

CHIP_SIZE = 150
EMBED_DIM = 128


class Embedder:
    """Wraps a loaded embedder model; `embed` is the only per-frame call."""

    def __init__(self, model: TFLiteModel, *, flip: bool = False) -> None:
        shape = model.input_shape
        if len(shape) != 4 or tuple(shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
            raise InputError(f"{model.path}: embedder input {shape} is not [1,{CHIP_SIZE},{CHIP_SIZE},3] NHWC")
        if shape[0] != 1:
            model.resize_batch(1)  # see module docstring: batch 1 is the only size that works
        self.model = model
        # Test-time flip: each face is described by the mean of its chip's and its mirror's
        # descriptors (the embedder's manifest scoring block decides; measured in docs/BENCHMARKS.md).
        self.flip = flip
        self._in_q = model.input_quant[0]
        self._out_q = model.output_quant[0]
        in_dtype = np.dtype(self._in_q.dtype)
        # Preallocated so the per-chip path makes no input allocations.
        self._buf: npt.NDArray[Any] = np.zeros((1, CHIP_SIZE, CHIP_SIZE, 3), in_dtype)
        self._xor_path = in_dtype == np.int8 and self._in_q.scale == 1.0 and self._in_q.zero_point == -128
        self._float_path = self._in_q.scale == 0.0
        out_shape = tuple(int(v) for v in model.outputs[0]["shape"])
        self.dim = int(out_shape[-1])

    @classmethod
    def from_config(
        cls, models_dir: Path | None = None, model_id: str = "dlib_resnet_v1_int8", num_threads: int = 2
    ) -> Embedder:
        """Load a manifest model by id (sha256-checked) and wrap it with its scoring's flip setting."""
        from edge.vision.scoring import load_scoring

        flip = load_scoring(model_id, models_dir).flip
        return cls(load_model(model_id, models_dir, num_threads=num_threads), flip=flip)

    def _fill(self, chip: U8) -> None:
        if self._xor_path:
            # uint8 p -> int8 (p - 128): same bits with the sign bit flipped; no float round trip.
            np.bitwise_xor(chip, np.uint8(0x80), out=self._buf.view(np.uint8)[0])
        elif self._float_path:
            self._buf[0] = chip  # float32 model: raw pixel values, the model normalises
        else:
            self._buf[0] = self._in_q.quantize(chip.astype(np.float32))

    def embed(self, chips: U8) -> F32:
        """(N,150,150,3) uint8 RGB chips -> (N,128) float32, each row L2-normalised."""
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise InputError(f"chips must be (N,{CHIP_SIZE},{CHIP_SIZE},3), got {chips.shape}")
        if chips.dtype != np.uint8:
            raise InputError(f"chips must be uint8 RGB, got {chips.dtype}")
        out = self._describe(chips)
        if self.flip:
            # Both views normalised before the mean, so neither outweighs the other.
            out += self._describe(chips[:, :, ::-1])
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
