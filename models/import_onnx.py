"""Import a licensed ONNX face embedder: ONNX -> PyTorch -> TFLite fp32 -> static int8 -> manifest.

Run through `lfr-edge models import` (edge/cli/models.py checks the arguments first).
Off-device only: torch, onnx, onnx2torch, litert-torch and ai-edge-quantizer (the `build`
extra). The device runs the two .tflite files this writes and reads their manifest entries:

    <models-dir>/<NAME>_fp32.tflite, <NAME>_int8.tflite, MANIFEST.json entries NAME_fp32, NAME_int8

Normalisation is not folded into the graph: the entry's `preprocess` block (channel order, mean,
std) is applied by the device (edge.core.vision.embed), one table lookup per pixel, so the int8
model's input quantisation is whatever calibration found and the fp32 model sees exactly the
values the ONNX model was trained on.

Calibration and the int8 check use chips cut the way the device cuts them: the shipped
BlazeFace detector (full range, fp32) on public faces, the primary face, and the chosen
template (edge.core.vision.align.Aligner.for_template). Identities are sorted, permuted with a fixed
seed and halved: calibration images from the first half, held-out images from the second; the
entry lists the calibration identities.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.config import DetectionConfig
from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.inference import TFLiteModel, default_models_dir, load_model, sha256_file
from edge.core.types import U8
from edge.core.vision.align import Aligner, ChipTemplate
from edge.core.vision.analyze import primary_chip
from edge.core.vision.detect import FaceDetector
from edge.core.vision.embed import Preprocess
from models.build import write_manifest
from models.build_embedder import cosines, op_counts, quantize_int8, tool_version
from models.golden_inputs import record_entry

SEED = 20240611  # the same identity permutation as the shipped embedder's build
CHIP_DETECTOR = "blazeface_full_range_fp32"
TORCH_TFLITE_MIN_COS = 0.9999
TOOLS = ("torch", "onnx", "onnx2torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ImportRequest:
    onnx: Path
    template: ChipTemplate
    preprocess: Preprocess
    name: str
    licence: str
    source: str | None
    faces: Path  # a folder with labels.csv (path,identity), e.g. faces/lfw
    models_dir: Path
    n_calib: int = 128
    n_held_out: int = 64
    min_int8_cosine: float = 0.98
    command: str = ""


@dataclass(frozen=True, slots=True)
class OnnxIO:
    layout: str  # "NCHW" | "NHWC"
    size: int  # chip side in pixels
    dim: int  # descriptor size
    opset: int
    producer: str


# ------------------------------------------------------------------------------------------------
# ONNX


def inspect_onnx(path: Path, template_size: int) -> tuple[Any, OnnxIO]:
    """Load and check the file; one clear error for anything that is not a face-chip embedder."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ... for a file that is not ONNX
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a valid ONNX model ({first})") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise InputError(f"{path}: expected one image input, found {len(inputs)} inputs")

    def dims(v: Any) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]

    d_in, d_out = dims(inputs[0]), dims(graph.output[0])
    if len(d_in) != 4:
        raise InputError(f"{path}: input {inputs[0].name!r} has rank {len(d_in)}, expected 4 (an NCHW or NHWC image)")
    if d_in[1] == 3:
        layout, hw = "NCHW", (d_in[2], d_in[3])
    elif d_in[3] == 3:
        layout, hw = "NHWC", (d_in[1], d_in[2])
    else:
        raise InputError(f"{path}: input shape {d_in} has no 3-channel axis (expected [N,3,S,S] or [N,S,S,3])")
    if hw[0] is not None and hw[1] is not None and hw[0] != hw[1]:
        raise InputError(f"{path}: input {hw[0]}x{hw[1]} is not a square chip")
    size = hw[0] or template_size
    if d_out and len(d_out) not in (2, 4):
        raise InputError(f"{path}: output has rank {len(d_out)}, expected [N,D] (or [N,D,1,1])")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    # The descriptor size is read from a run of the converted network (to_torch): exporters often
    # leave the output's dims symbolic.
    return model, OnnxIO(layout, int(size), 0, int(opset), f"{model.producer_name} {model.producer_version}".strip())


def fold_constants(model: Any, io: OnnxIO) -> Any:
    """Fix the input to [1, chip] and evaluate every node whose inputs are then known.

    Exporters often compute pads, reshapes and slices from `Shape` at run time. With a fixed
    chip those are constants, and torch.export (inside litert-torch) needs them as constants: a
    size computed from a tensor fails to trace. onnx's own reference evaluator computes them.
    """
    import onnx
    from onnx import numpy_helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    x = next(i for i in graph.input if i.name not in inits)
    want = [1, 3, io.size, io.size] if io.layout == "NCHW" else [1, io.size, io.size, 3]
    for d, v in zip(x.type.tensor_type.shape.dim, want, strict=True):
        d.ClearField("dim_param")
        d.dim_value = v
    known: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes: dict[str, list[int]] = {}
    inferred = shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape") and all(v >= 0 for v in dims):
            shapes[vi.name] = dims
    keep: list[Any] = []
    folded = 0
    for node in graph.node:
        ins = [n for n in node.input if n]
        value: list[Any] | None = None
        if node.op_type == "Shape" and ins[0] in shapes:
            full = np.asarray(shapes[ins[0]], np.int64)
            attrs = {a.name: a.i for a in node.attribute}
            value = [full[attrs.get("start", 0) : attrs.get("end", len(full))]]
        elif node.op_type == "Constant" or (ins and all(n in known for n in ins) and node.domain in ("", "ai.onnx")
                                            and not any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)):  # fmt: skip
            value = list(ReferenceEvaluator(node).run(None, {n: known[n] for n in ins}))
        if value is None:
            keep.append(node)
            continue
        folded += 1
        for name, v in zip(node.output, value, strict=True):
            known[name] = np.asarray(v)
            graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    del graph.node[:]
    graph.node.extend(keep)
    used = {n for node in keep for n in node.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    print(f"[import] folded {folded} constant nodes; {len(keep)} nodes left")
    return model


def to_torch(model: Any, io: OnnxIO, path: Path) -> tuple[Any, int]:
    """onnx2torch's module, wrapped to take what the device feeds: NHWC float, normalised."""
    import torch
    from onnx2torch import convert  # type: ignore[import-untyped]

    try:
        net = convert(model)
    except (NotImplementedError, KeyError, ValueError) as e:
        raise InputError(f"{path}: onnx2torch cannot convert it ({str(e).splitlines()[0] if str(e) else e!r})") from None

    net = _static_shapes(net)

    class NHWCEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x.permute(0, 3, 1, 2) if io.layout == "NCHW" else x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            return torch.flatten(y, 1)

    wrapper = NHWCEmbedder().eval()
    with torch.inference_mode():
        try:
            y = wrapper(torch.zeros(1, io.size, io.size, 3))
        except Exception as e:  # a graph that cannot run on a chip of this size
            raise InputError(f"{path}: does not run on a {io.size}x{io.size} chip ({str(e).splitlines()[0]})") from None
    if y.ndim != 2 or int(y.shape[1]) < 2:
        raise InputError(f"{path}: output {list(y.shape)} is not one descriptor per image ([N,D])")
    return wrapper, int(y.shape[1])


def _static_shapes(gm: Any) -> Any:
    """onnx2torch reads Pad's pads and Reshape's shape from tensors at run time (`.tolist()`),
    which torch.export cannot trace. Where those tensors are constants (after fold_constants),
    bake them in as Python ints."""
    import torch
    from onnx2torch.node_converters.pad import OnnxPadDynamic, OnnxPadStatic  # type: ignore[import-untyped]
    from onnx2torch.node_converters.reshape import OnnxReshape  # type: ignore[import-untyped]

    class StaticReshape(torch.nn.Module):
        def __init__(self, shape: list[int]) -> None:
            super().__init__()
            self.shape = shape

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.reshape(x, [int(x.shape[i]) if d == 0 else d for i, d in enumerate(self.shape)])

    def const(node: Any) -> Any:
        if getattr(node, "op", None) != "get_attr":
            return None
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        new: torch.nn.Module | None = None
        if isinstance(mod, OnnxPadDynamic) and len(node.args) >= 2 and const(node.args[1]) is not None:
            pads = [int(v) for v in const(node.args[1]).tolist()]
            half = len(pads) // 2
            torch_pads = [v for i in reversed(range(half)) for v in (pads[i], pads[i + half])]
            value = const(node.args[2]) if len(node.args) > 2 else None
            new = OnnxPadStatic(pads=torch_pads, mode=mod.mode, constant_value=float(value) if value is not None else 0.0)
        elif isinstance(mod, OnnxReshape) and len(node.args) == 2 and const(node.args[1]) is not None:
            new = StaticReshape([int(v) for v in const(node.args[1]).tolist()])
        if new is None:
            continue
        name = f"static_{n}"
        n += 1
        gm.add_submodule(name, new)
        node.target = name
        node.args = (node.args[0],)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def torch_descriptors(wrapper: Any, x: F32) -> F32:
    import torch

    with torch.inference_mode():
        out = [wrapper(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))]
    return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Public faces -> chips the way the device cuts them


def split_identities(labels_root: Path, seed: int = SEED) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(calibration, held-out) lists of (identity, image): one image per identity, disjoint people."""
    labels = labels_root / "labels.csv"
    if not labels.exists():
        raise InputError(f"--faces {labels_root}: no labels.csv (path,identity) there; give the LFW folder")
    by_id: dict[str, list[str]] = {}
    with labels.open(newline="") as f:
        for row in csv.DictReader(f):
            by_id.setdefault(row["identity"], []).append(row["path"])
    ids = sorted(by_id)
    if len(ids) < 4:
        raise InputError(f"--faces {labels_root}: {len(ids)} identities; calibration needs many people")
    order = np.random.default_rng(seed).permutation(len(ids))
    half = len(ids) // 2

    def pick(part: npt.NDArray[np.intp]) -> list[tuple[str, Path]]:
        return [(ids[i], labels_root / sorted(by_id[ids[i]])[0]) for i in part]

    return pick(order[:half]), pick(order[half:])


class ChipCutter:
    def __init__(self, template: ChipTemplate, size: int) -> None:
        model = load_model(CHIP_DETECTOR, default_models_dir(), num_threads=2)
        self.detector = FaceDetector.from_settings(model, DetectionConfig(), whole_frame_only=True, min_face=False)
        self.aligner = Aligner.for_template(template, size)

    def chips(self, items: list[tuple[str, Path]], n: int) -> tuple[U8, list[str]]:
        out: list[U8] = []
        used: list[str] = []
        for ident, path in items:
            if len(out) == n:
                break
            rgb = decode_rgb(path)
            if rgb is None:
                continue
            chip = primary_chip(self.detector, self.aligner.align, rgb)
            if chip is None:
                continue
            out.append(chip)
            used.append(ident)
        if len(out) < n:
            raise InputError(f"only {len(out)} faces found for {n} chips; give a larger --faces folder")
        return np.stack(out), used


def normalise(chips: U8, pre: Preprocess) -> F32:
    """Exactly the device's mapping (edge.core.vision.embed): a per-channel table indexed by the byte."""
    src = chips[..., ::-1] if pre.channels.value == "bgr" else chips
    out: F32 = np.ascontiguousarray(pre.table()[src, np.arange(3)], np.float32)
    return out


# ------------------------------------------------------------------------------------------------


def _io_block(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    m = TFLiteModel(path, num_threads=1)
    i, o = m.inputs[0], m.outputs[0]
    qi, qo = m.input_quant[0], m.output_quant[0]
    inp = {"shape": [int(v) for v in i["shape"]], "dtype": np.dtype(i["dtype"]).name, "layout": "NHWC",
           "quantization": {"scale": qi.scale, "zero_point": qi.zero_point},
           "normalisation": "applied by the device from `preprocess`: (pixel - mean) / std per channel, in `channels` order"}  # fmt: skip
    outp = {"shape": [int(v) for v in o["shape"]], "dtype": np.dtype(o["dtype"]).name,
            "quantization": {"scale": qo.scale, "zero_point": qo.zero_point},
            "meaning": "face descriptor, L2-normalised by the device"}  # fmt: skip
    return inp, outp


def import_model(req: ImportRequest) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    onnx_model, io = inspect_onnx(req.onnx, _template_size(req.template))
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    wrapper, dim = to_torch(fold_constants(onnx_model, io), io, req.onnx)
    io = OnnxIO(io.layout, io.size, dim, io.opset, io.producer)
    print(f"[import] {req.onnx}: {io.layout} {io.size}x{io.size}x3 -> {io.dim}-d, opset {io.opset}, {io.producer}")

    cutter = ChipCutter(req.template, io.size)
    calib_items, held_items = split_identities(req.faces)
    calib, calib_ids = cutter.chips(calib_items, req.n_calib)
    held, _ = cutter.chips(held_items, req.n_held_out)
    x_cal, x_held = normalise(calib, req.preprocess), normalise(held, req.preprocess)
    print(f"[import] {len(calib)} calibration + {len(held)} held-out chips ({req.template.value}) "
          f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    req.models_dir.mkdir(parents=True, exist_ok=True)
    # Built beside the models and moved in only once every check passed: a failed import leaves
    # the models folder as it was.
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=req.models_dir))
    try:
        return _build(req, wrapper, io, x_cal, x_held, calib_ids, work, t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(req: ImportRequest, wrapper: Any, io: OnnxIO, x_cal: F32, x_held: F32, calib_ids: list[str],
           work: Path, t0: float) -> list[dict[str, Any]]:  # fmt: skip
    import litert_torch  # type: ignore[import-untyped]
    import torch

    fp32_path = work / f"{req.name}_fp32.tflite"
    int8_path = work / f"{req.name}_int8.tflite"
    sample = (torch.from_numpy(x_cal[:1]),)
    try:
        litert_torch.convert(wrapper, sample).export(str(fp32_path))
    except Exception as e:  # the converter raises many kinds; its first line says which op failed
        raise InputError(f"{req.onnx}: litert-torch cannot convert it ({str(e).splitlines()[0]})") from None
    ref = torch_descriptors(wrapper, x_held)
    fp32_out = _run(fp32_path, x_held)
    tt_cos = float(cosines(ref, fp32_out).min())
    print(f"[import] torch vs fp32 TFLite: min cosine {tt_cos:.7f} ({len(x_held)} held-out chips): {op_counts(fp32_path)}")
    if tt_cos < TORCH_TFLITE_MIN_COS:
        raise RuntimeError(f"fp32 TFLite disagrees with the ONNX network: min cosine {tt_cos} < {TORCH_TFLITE_MIN_COS}")

    quantize_int8(fp32_path, x_cal, int8_path)
    int8_out = _run(int8_path, x_held)
    cos = cosines(int8_out, fp32_out)
    q_min, q_mean = float(cos.min()), float(cos.mean())
    print(f"[import] int8 vs fp32 on {len(x_held)} held-out chips: min cosine {q_min:.5f}, mean {q_mean:.5f}")
    if q_min < req.min_int8_cosine:
        raise RuntimeError(f"int8 too far from fp32: min cosine {q_min:.5f} < {req.min_int8_cosine} "
                           "(more --calib chips may help; the fp32 model is usable as it is)")  # fmt: skip

    source: dict[str, Any] = {"file": req.onnx.name, "sha256": sha256_file(req.onnx), "onnx_opset": io.opset,
                              "producer": io.producer, "layout": io.layout}  # fmt: skip
    if req.source:
        source["origin"] = req.source
    versions = {t: tool_version(t) for t in TOOLS}
    calibration = {
        "faces": str(req.faces),
        "images": len(x_cal),
        "selection": f"one image per identity from labels.csv; identities sorted, permuted with numpy "
        f"default_rng({SEED}), first half = calibration, second half = held-out ({len(x_held)} images for "
        f"the int8 check); chips by the shipped {CHIP_DETECTOR} + {req.template.value} template; "
        "activation ranges = global min/max",
        "identities": ", ".join(calib_ids),
    }
    entries: list[dict[str, Any]] = []
    for prec, path in (("fp32", fp32_path), ("int8", int8_path)):
        inp, outp = _io_block(path)
        entry: dict[str, Any] = {
            "id": f"{req.name}_{prec}",
            "file": path.name,
            "sha256": sha256_file(path),
            "role": "embedder",
            "precision": prec,
            "input": inp,
            "output": outp,
            "source": source,
            "licence": req.licence,
            "import_command": req.command,
            "built_with": versions,
            "template": req.template.value,
            "chip_size": io.size,
            "dim": io.dim,
            "preprocess": req.preprocess.to_manifest(),
            "checks": {"torch_vs_fp32_min_cosine": round(tt_cos, 7)},
        }
        if prec == "int8":
            entry["checks"] = {
                "int8_vs_fp32_min_cosine": round(q_min, 6),
                "int8_vs_fp32_mean_cosine": round(q_mean, 6),
                "eval_set": f"{len(x_held)} held-out chips, identities disjoint from calibration",
            }
            entry["calibration"] = calibration
        entries.append(entry)
    for entry, path in zip(entries, (fp32_path, int8_path), strict=True):
        os.replace(path, req.models_dir / path.name)
        record_entry(req.models_dir, entry)
    write_manifest(req.models_dir, entries)
    print(f"[import] wrote {', '.join(e['id'] for e in entries)} to {req.models_dir} in {time.perf_counter() - t0:.0f}s")
    return entries


def _template_size(t: ChipTemplate) -> int:
    from edge.core.vision.align import TEMPLATES

    return TEMPLATES[t][0]


def _run(path: Path, x: F32) -> F32:
    m = TFLiteModel(path, num_threads=2)
    q_in, q_out = m.input_quant[0], m.output_quant[0]
    out = np.empty((len(x), int(m.outputs[0]["shape"][-1])), np.float32)
    for i in range(len(x)):
        out[i] = q_out.dequantize(m.invoke(q_in.quantize(x[i : i + 1]))[0]).reshape(-1)
    return out
