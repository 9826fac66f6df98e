"""Reader for dlib's DNN `.dat` serialisation, written from the format (no dlib import).

Only what dlib's `serialize(net)` writes for a `loss_metric<…>` network is supported, which is
what `dlib_face_recognition_resnet_model_v1.dat` is. Layout, as dlib writes it:

* integer: one control byte (bit 7 = negative, low 4 bits = byte count n) then n little-endian
  magnitude bytes;
* float/double: integer mantissa then integer exponent, value = m * 2**e;
* bool: one ASCII byte '0' or '1';
* string: integer length then that many bytes;
* tensor: integer version (2), integers n, k, nr, nc, then n*k*nr*nc raw little-endian float32;
* alias_tensor: integer version (1), integers n, k, nr, nc (a view into the layer's params).

Network wrappers (`add_layer`, `add_tag_layer`, `add_skip_layer`) write their version and then
recurse into the layer below *before* writing their own fields, so the file opens with a run of
wrapper versions (outermost first) and the layer fields follow innermost (input) first. The
wrapper version tells us which wrapper it is: 1 = tag/skip (no fields of its own), 2 = a
computational `add_layer` (details + bookkeeping after the recursion), 3 = the `add_layer` that
sits directly on the input layer. Tag ids are not serialised, so the graph wiring (which tag a
skip/add_prev refers to) comes from the network definition, not from this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

# float_details encodes non-finite values as reserved exponents (dlib/float_details.h).
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DatFormatError(ValueError):
    """The stream does not follow the layout this reader understands."""


@dataclass
class Layer:
    """One serialised layer: `kind` is dlib's tag without its version suffix (e.g. "con")."""

    kind: str
    version: str  # the exact string dlib wrote, e.g. "con_4"; kept so format drift is visible
    fields: dict[str, Any] = field(default_factory=dict)  # scalar hyper-parameters
    weights: dict[str, F32] = field(default_factory=dict)  # numpy arrays, dlib's own layout


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"unexpected end of file at byte {self.pos} (wanted {n} more)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def read_int(self) -> int:
        ctrl = self._take(1)[0]
        n = ctrl & 0x0F
        if ctrl & 0x70 or n > 8:
            raise DatFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        v = int.from_bytes(self._take(n), "little") if n else 0
        return -v if ctrl & 0x80 else v

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _EXP_INF:
            return float("inf")
        if exponent == _EXP_NINF:
            return float("-inf")
        if exponent == _EXP_NAN:
            return float("nan")
        return float(mantissa) * 2.0**exponent

    def read_bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise DatFormatError(f"bad bool byte {c!r} at byte {self.pos - 1}")
        return c == b"1"

    def read_string(self) -> str:
        n = self.read_int()
        return self._take(n).decode("ascii")

    def read_tensor(self) -> F32:
        version = self.read_int()
        if version != 2:
            raise DatFormatError(f"tensor version {version} at byte {self.pos}; only 2 is supported")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise DatFormatError(f"alias_tensor version {version}; only 1 is supported")
        n, k, nr, nc = (self.read_int() for _ in range(4))
        return (n, k, nr, nc)


def _split_params(params: F32, views: list[tuple[int, int, int, int]]) -> list[F32]:
    """dlib layers keep all parameters in one flat tensor; alias_tensors are consecutive views."""
    flat = params.reshape(-1)
    out: list[F32] = []
    off = 0
    for shape in views:
        size = int(np.prod(shape))
        out.append(flat[off : off + size].reshape(shape).copy())
        off += size
    if off != flat.size:
        raise DatFormatError(f"parameter views cover {off} of {flat.size} values")
    return out


def _read_window(r: _Reader) -> dict[str, Any]:
    """Kernel size, stride and padding, in the order con_ and the pools write them."""
    return {k: r.read_int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}


def _read_mults(r: _Reader) -> dict[str, Any]:
    """The learning-rate / weight-decay multipliers con_ and fc_ write after their parameters."""
    return {k: r.read_float() for k in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult")}


def _read_details(r: _Reader) -> Layer:
    """One layer's own serialisation (what `serialize(item.details)` writes)."""
    version = r.read_string()
    kind = version.rstrip("0123456789").rstrip("_")
    if version == "con_4":
        params = r.read_tensor()
        f: dict[str, Any] = {"num_filters": r.read_int(), **_read_window(r)}
        filt_shape = r.read_alias()
        bias_shape = r.read_alias()
        f.update(_read_mults(r))
        filters, biases = _split_params(params, [filt_shape, bias_shape])
        # filters are (out, in, kh, kw) like PyTorch; biases (1, out, 1, 1)
        return Layer("con", version, f, {"filters": filters, "biases": biases.reshape(-1)})
    if version == "affine_":
        params = r.read_tensor()
        g_shape = r.read_alias()
        b_shape = r.read_alias()
        mode = r.read_int()  # dlib layer_mode: 0 = CONV_MODE (per channel), 1 = FC_MODE (per element)
        gamma, beta = _split_params(params, [g_shape, b_shape])
        return Layer("affine", version, {"mode": mode}, {"gamma": gamma, "beta": beta})
    if version in ("max_pool_2", "avg_pool_2"):
        return Layer(kind, version, _read_window(r))
    if version in ("relu_", "add_prev_"):
        return Layer(kind, version)
    if version == "fc_2":
        f = {"num_outputs": r.read_int(), "num_inputs": r.read_int()}
        params = r.read_tensor()
        w_shape = r.read_alias()
        b_shape = r.read_alias()
        f["bias_mode"] = r.read_int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        f.update(_read_mults(r))
        views = [w_shape] + ([b_shape] if f["bias_mode"] == 0 else [])
        parts = _split_params(params, views)
        # params are (num_inputs [+1 bias row], num_outputs) row-major: y = x @ W (+ b)
        w: dict[str, F32] = {"weights": parts[0].reshape(f["num_inputs"], f["num_outputs"])}
        if f["bias_mode"] == 0:
            w["biases"] = parts[1].reshape(-1)
        return Layer("fc", version, f, w)
    if version == "input_rgb_image_sized":
        f = {
            "avg_red": r.read_float(),
            "avg_green": r.read_float(),
            "avg_blue": r.read_float(),
            "nr": r.read_int(),
            "nc": r.read_int(),
        }
        return Layer("input_rgb_image_sized", version, f)
    raise DatFormatError(f"unsupported layer {version!r} at byte {r.pos}")


@dataclass
class DlibNet:
    loss: Layer
    layers: list[Layer]  # input first; tag/skip wrappers appear as kind "tag_or_skip"

    def of_kind(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]


def parse(data: bytes) -> DlibNet:
    r = _Reader(data)
    if r.read_int() != 1:
        raise DatFormatError("expected add_loss_layer version 1 at the start")
    loss_version = r.read_string()
    if loss_version != "loss_metric_2":
        raise DatFormatError(f"unsupported loss layer {loss_version!r}")
    loss = Layer("loss_metric", loss_version, {"margin": r.read_float(), "dist_thresh": r.read_float()})

    # Wrapper versions outermost first; stop at the add_layer that owns the input layer.
    stack: list[int] = []
    while True:
        v = r.read_int()
        if v == 3:
            break
        if v not in (1, 2):
            raise DatFormatError(f"unexpected wrapper version {v} at byte {r.pos}")
        stack.append(v)

    layers: list[Layer] = [_read_details(r)]  # the input layer
    layers.append(_read_details(r))  # first computational layer (the one wrapping the input)
    for _ in range(3):
        r.read_bool()  # this_layer_setup_called, gradient_input_is_stale, get_output…disabled
    for _ in range(3):
        r.read_tensor()  # x_grad, cached_output, grad_final: training state, empty in a saved net
    r.read_int()  # _sample_expansion_factor

    for v in reversed(stack):
        if v == 1:
            layers.append(Layer("tag_or_skip", "1"))
            continue
        layers.append(_read_details(r))
        for _ in range(3):
            r.read_bool()
        for _ in range(3):
            r.read_tensor()  # x_grad, cached_output, params_grad
    if r.pos != len(data):
        raise DatFormatError(f"{len(data) - r.pos} trailing bytes after the network")
    return DlibNet(loss, layers)


def load(path: Path) -> DlibNet:
    return parse(path.read_bytes())


def describe(net: DlibNet) -> list[str]:
    """Human-readable layer list, used by the build log and by tests."""
    out = [f"loss {net.loss.version} {net.loss.fields}"]
    for i, layer in enumerate(net.layers):
        shapes = {k: tuple(v.shape) for k, v in layer.weights.items()}
        scal = {k: v for k, v in layer.fields.items() if not k.endswith("_mult")}
        out.append(f"{i:3d} {layer.kind:22s} {scal} {shapes}")
    return out


if __name__ == "__main__":
    import sys

    for line in describe(load(Path(sys.argv[1]))):
        print(line)
