"""The one TFLite loader: prefers ai-edge-litert, falls back to tflite-runtime, checks sha256.

Every model the appliance runs is listed in models/MANIFEST.json with its sha256; a file that
does not match is refused, so a swapped or corrupted model can never silently change who matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError

MANIFEST_NAME = "MANIFEST.json"


def default_models_dir() -> Path:
    """Models ship beside the package in a checkout, or under /opt/lfr-edge/models on an appliance."""
    env = os.environ.get("LFR_EDGE_MODELS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "models"
    if (checkout / MANIFEST_NAME).exists():
        return checkout
    return Path("/opt/lfr-edge/models")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    file: str
    sha256: str
    role: str  # "detector" | "embedder" | "landmarks"
    precision: str  # "int8" | "fp32" | "fp16"
    raw: dict[str, Any]


def load_manifest(models_dir: Path) -> dict[str, ModelEntry]:
    path = models_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: model manifest not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    out: dict[str, ModelEntry] = {}
    for i, m in enumerate(data.get("models", [])):
        try:
            out[m["id"]] = ModelEntry(m["id"], m["file"], m["sha256"], m["role"], m["precision"], m)
        except KeyError as e:
            raise InputError(f"{path}: models[{i}] lacks field {e.args[0]!r}") from None
    return out


def write_manifest_entries(models_dir: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace or add entries by id, keep the rest, order by id (stable diffs), write atomically.

    The one writer of MANIFEST.json: model builds, imports, cohorts and calibration all go through it.
    """
    path = models_dir / MANIFEST_NAME
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        data = {"models": []}
    new = {e["id"]: e for e in entries}
    kept = [m for m in data.get("models", []) if m.get("id") not in new]
    data["models"] = sorted([*kept, *new.values()], key=lambda m: str(m["id"]))
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return data


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise InputError(
            "no TFLite runtime: install ai-edge-litert (preferred) or tflite-runtime (setup.sh does this)"
        ) from None


def runtime_name() -> str:
    return _interpreter_class()[1]


@dataclass(frozen=True, slots=True)
class Quant:
    """Affine quantisation of one tensor (scale 0 means the tensor is float)."""

    dtype: type[np.generic]
    scale: float
    zero_point: int

    def quantize(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        if self.scale == 0.0:
            return x.astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)  # type: ignore[type-var]
        q = np.rint(x / self.scale) + self.zero_point
        out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(self.dtype)
        return out

    def dequantize(self, q: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        if self.scale == 0.0:
            return q.astype(np.float32, copy=False)
        return ((q.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def _quant(detail: dict[str, Any]) -> Quant:
    scale, zp = detail.get("quantization", (0.0, 0))
    return Quant(detail["dtype"], float(scale), int(zp))


class InvokeTimer:
    """Time spent inside interpreters, summed over the models it is given to (TFLiteModel.timer)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.invokes = 0

    def add(self, seconds: float) -> None:
        self.total_s += seconds
        self.invokes += 1


class TFLiteModel:
    """A loaded interpreter with its tensors described once; invoke() is the only per-frame call."""

    def __init__(
        self, path: Path, num_threads: int = 2, model_id: str | None = None, entry: ModelEntry | None = None
    ) -> None:
        cls, self.runtime = _interpreter_class()
        self.path = path
        self.id = model_id or path.stem
        # The manifest entry it was loaded by (load_model), so stages read their contract from it.
        self.entry = entry
        try:
            self._interp = cls(model_path=str(path), num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InputError(f"{path}: cannot load TFLite model ({e})") from None
        self.inputs = self._interp.get_input_details()
        self.outputs = self._interp.get_output_details()
        self.input_quant = [_quant(d) for d in self.inputs]
        self.output_quant = [_quant(d) for d in self.outputs]
        self.num_threads = num_threads
        self.delegate = "xnnpack-cpu"
        self.timer: InvokeTimer | None = None  # set by whoever measures (the benchmark); None costs nothing

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.inputs[0]["shape"])

    def resize_batch(self, n: int) -> None:
        """Batching several faces in one invoke amortises interpreter overhead."""
        shape = list(self.input_shape)
        if shape[0] == n:
            return
        shape[0] = n
        self._interp.resize_tensor_input(self.inputs[0]["index"], shape)
        self._interp.allocate_tensors()
        self.inputs = self._interp.get_input_details()
        self.outputs = self._interp.get_output_details()

    def invoke(self, *xs: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Raw tensors in (already in the input dtype), raw tensors out (copies, safe to keep)."""
        for d, x in zip(self.inputs, xs, strict=True):
            self._interp.set_tensor(d["index"], x)
        if self.timer is None:
            self._interp.invoke()
        else:
            t0 = time.perf_counter()
            self._interp.invoke()
            self.timer.add(time.perf_counter() - t0)
        return [self._interp.get_tensor(d["index"]) for d in self.outputs]


def load_model(
    model_id: str, models_dir: Path | None = None, num_threads: int = 2, verify: bool = True
) -> TFLiteModel:
    """Load a manifest model by id, refusing it when its sha256 differs from the manifest."""
    models_dir = models_dir or default_models_dir()
    manifest = load_manifest(models_dir)
    if model_id not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise InputError(f"{models_dir / MANIFEST_NAME}: unknown model id {model_id!r} (known: {known})")
    entry = manifest[model_id]
    path = models_dir / entry.file
    if not path.exists():
        raise InputError(f"{path}: model file missing (manifest id {model_id!r})")
    if verify:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise InputError(
                f"{path}: sha256 {digest[:12]}… does not match the manifest ({entry.sha256[:12]}…); refusing it"
            )
    return TFLiteModel(path, num_threads=num_threads, model_id=model_id, entry=entry)
