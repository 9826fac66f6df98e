"""The committed embedder models: parser, rebuild, conversion, quantisation and runtime wrapper.

Figures are checked on real aligned faces (LFW identities held out from int8 calibration), not
on noise: quantisation error on random input says little about faces.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.core.inference import load_manifest, sha256_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
INT8, FP32 = "dlib_resnet_v1_int8", "dlib_resnet_v1_fp32"


def _runtime_or_skip() -> None:
    if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is None:
        pytest.skip("no TFLite runtime (pip install ai-edge-litert)")


@pytest.fixture(scope="module")
def dat_path() -> Path:
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed (it ships the dlib .dat weights)")
    from models.build_embedder import MODEL_FILE, source_dir

    return source_dir() / MODEL_FILE


@pytest.fixture(scope="module")
def eval_chips(faces_dir: Path) -> np.ndarray:
    """200 aligned chips of identities the int8 model was NOT calibrated on."""
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed (its 5-point predictor aligns the chips)")
    from models.build_embedder import lfw_chips

    return lfw_chips(faces_dir, "eval", 200)


def _embed(model_id: str, chips: np.ndarray) -> np.ndarray:
    from edge.core.vision.embed import Embedder

    return Embedder.from_config(MODELS, model_id, num_threads=2).embed(chips)


# --- parser (numpy only) -------------------------------------------------------------------


def test_parser_layer_shapes(dat_path: Path) -> None:
    from models.dlib_dat import load

    net = load(dat_path)
    convs = net.of_kind("con")
    got = [tuple(c.weights["filters"].shape) for c in convs]
    want = [(32, 3, 7, 7)]
    c_in = 32
    for width, n_blocks in ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1)):
        for _ in range(n_blocks):
            want += [(width, c_in, 3, 3), (width, width, 3, 3)]
            c_in = width
    assert got == want
    assert len(convs) == 29
    assert [c.weights["biases"].shape for c in convs] == [(w[0],) for w in want]
    strides = [c.fields["stride_y"] for c in convs]
    assert strides.count(2) == 5  # stem + 4 downsampling blocks
    assert all(c.fields["padding_y"] == (0 if c.fields["stride_y"] == 2 else 1) for c in convs)
    affines = net.of_kind("affine")
    assert len(affines) == 29
    assert [a.weights["gamma"].size for a in affines] == [w[0] for w in want]
    assert len(net.of_kind("add_prev")) == 14
    assert len(net.of_kind("max_pool")) == 1
    assert len(net.of_kind("avg_pool")) == 5
    (fc,) = net.of_kind("fc")
    assert fc.weights["weights"].shape == (256, 128)
    assert "biases" not in fc.weights
    inp = net.layers[0].fields
    np.testing.assert_allclose(
        [inp["avg_red"], inp["avg_green"], inp["avg_blue"]], [122.782, 117.001, 104.298], atol=1e-4
    )
    assert (inp["nr"], inp["nc"]) == (150, 150)
    assert all(np.isfinite(c.weights["filters"]).all() for c in convs)


def test_parser_rejects_truncated_file(dat_path: Path) -> None:
    from models.dlib_dat import DatFormatError, parse

    data = dat_path.read_bytes()
    with pytest.raises(DatFormatError):
        parse(data[: len(data) // 2])
    with pytest.raises(DatFormatError):
        parse(data + b"\x00")


# --- manifest ------------------------------------------------------------------------------


def test_manifest_entries_match_files() -> None:
    manifest = load_manifest(MODELS)
    for mid, prec in ((INT8, "int8"), (FP32, "fp32")):
        e = manifest[mid]
        assert (e.role, e.precision) == ("embedder", prec)
        assert sha256_file(MODELS / e.file) == e.sha256
        raw: dict[str, Any] = e.raw
        assert raw["input"]["shape"] == [1, 150, 150, 3]
        assert raw["input"]["range"] == [0, 255]
        assert raw["output"]["shape"] == [1, 128]
        assert raw["source"]["package"] == "face-recognition-models"
        assert "68" not in json.dumps(raw["source"])  # the 68-point predictor is never a source
    assert "calibration" in manifest[INT8].raw


# --- conversion and quantisation on real faces ---------------------------------------------


def test_torch_rebuild_matches_fp32_tflite(dat_path: Path, eval_chips: np.ndarray) -> None:
    pytest.importorskip("torch", reason="torch (build extra) not installed")
    _runtime_or_skip()
    import torch

    from models.build_embedder import run_tflite
    from models.dlib_resnet import build_from_dat, descriptors

    torch.set_num_threads(2)
    chips = eval_chips[:24]
    ref = descriptors(build_from_dat(dat_path), chips)
    got = run_tflite(MODELS / f"{FP32}.tflite", chips)
    assert float(np.abs(ref - got).max()) <= 1e-4


def test_rebuild_matches_dlib(dat_path: Path, eval_chips: np.ndarray) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin not installed: no reference to compare with")
    rec = dlib.face_recognition_model_v1(str(dat_path))
    chips = eval_chips[:8]
    theirs = np.array([np.asarray(rec.compute_face_descriptor(c)) for c in chips], np.float32)
    if importlib.util.find_spec("torch") is not None:
        from models.dlib_resnet import build_from_dat, descriptors

        ours = descriptors(build_from_dat(dat_path), chips)
    else:  # the committed fp32 model is the same network, so it is an equally valid witness
        _runtime_or_skip()
        from models.build_embedder import run_tflite

        ours = run_tflite(MODELS / f"{FP32}.tflite", chips)
    cos = np.sum(theirs * ours, 1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
    assert float(cos.min()) >= 0.9999
    assert float(np.abs(theirs - ours).max()) < 1e-4


def test_int8_close_to_fp32_on_held_out_faces(eval_chips: np.ndarray) -> None:
    _runtime_or_skip()
    assert len(eval_chips) >= 200
    q = _embed(INT8, eval_chips)
    f = _embed(FP32, eval_chips)
    cos = np.sum(q * f, axis=1)
    assert float(cos.min()) >= 0.995, f"worst chip {int(cos.argmin())}: cosine {cos.min():.5f}"


# --- runtime wrapper ----------------------------------------------------------------------


def test_embedder_contract(eval_chips: np.ndarray) -> None:
    _runtime_or_skip()
    from edge.core.errors import InputError
    from edge.core.vision.embed import Embedder

    emb = Embedder.from_config(MODELS, INT8, num_threads=2)
    out = emb.embed(eval_chips[:3])
    assert out.shape == (3, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb.embed(eval_chips[1]), out[1:2])  # single chip, same answer
    # the bit-flip fast path is exactly the generic quantiser
    q = emb.model.input_quant[0]
    np.testing.assert_array_equal(
        np.bitwise_xor(eval_chips[0], np.uint8(0x80)).view(np.int8), q.quantize(eval_chips[0].astype(np.float32))
    )
    assert emb.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(InputError):
        emb.embed(eval_chips[:2].astype(np.float32))  # type: ignore[arg-type]
    with pytest.raises(InputError):
        emb.embed(np.zeros((1, 112, 112, 3), np.uint8))
