"""`lfr-edge models import` on real networks, and an imported model through the whole device.

1. The project's own PyTorch rebuild of dlib's ResNet, exported to ONNX by torch.onnx and
   imported with the dlib150 template, gives the shipped model's outputs back on real chips.
2. A small ArcFace-shaped CNN (112x112, 512-d, BGR, mean/std 127.5; random but seeded weights)
   imported with the arcface112 template runs through enrolment (the FaceAnalyzer), the camera
   loop on a generated clip, `lfr-edge eval` and `models verify`, and its watchlist is refused
   by a device running the dlib model.

The imports need the build extra (torch 2.9.1, onnx, onnx2torch, litert-torch,
ai-edge-quantizer; `.ci/run` installs it); without it these tests skip, saying so. The argument
checks at the top run everywhere: they fail before any heavy import.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.cli.main import main
from edge.cli.models import IMPORT_MODULES
from edge.core.config import Config, parse_config
from edge.core.inference import default_models_dir, load_manifest, load_model, sha256_file
from edge.core.types import Subject

sys.path.insert(0, str(Path(__file__).parent))
import importkit
import videogen

ROOT = Path(__file__).resolve().parent.parent
MISSING = [m for m in IMPORT_MODULES if importlib.util.find_spec(m) is None]
needs_build = pytest.mark.skipif(
    bool(MISSING), reason=f"the [build] extra is not installed ({', '.join(MISSING)}): pip install -e '.[build]'"
)


def _base_args(onnx: Path, faces: Path, mdir: Path, name: str) -> list[str]:
    return ["models", "import", "--onnx", str(onnx), "--template", "arcface112", "--input", "rgb",
            "--mean", "127.5,127.5,127.5", "--std", "127.5,127.5,127.5", "--id", name,
            "--faces", str(faces), "--models-dir", str(mdir)]  # fmt: skip


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------


def test_import_refuses_without_a_licence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "labels.csv").write_text("path,identity\n")
    for extra in ([], ["--licence", "   "]):
        assert main([*_base_args(onnx, tmp_path / "faces", tmp_path / "out", "mine"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --licence is required") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_import_refuses_bad_names_and_normalisation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "labels.csv").write_text("path,identity\n")
    base = _base_args(onnx, faces, tmp_path / "out", "mine")
    cases = [
        (["--id", "Bad Name"], "--id 'Bad Name'"),
        (["--id", "dlib_resnet_v1"], "belongs to a shipped model"),
        (["--std", "127.5,0,127.5"], "--mean/--std.std"),
        (["--mean", "1,2"], "--mean/--std.mean"),
        (["--mean", "a,b,c"], "--mean 'a,b,c'"),
        (["--onnx", str(tmp_path / "nope.onnx")], "no such file"),
        (["--faces", str(tmp_path)], "no labels.csv"),
    ]
    for extra, want in cases:
        assert main([*base, "--licence", "test", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1, (extra, err)


@needs_build
def test_import_refuses_a_file_that_is_not_onnx_or_not_an_image_model(
    tmp_path: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model\n" * 10)
    assert main([*_base_args(junk, faces_dir / "lfw", tmp_path / "out", "junk"), "--licence", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{junk}: not a valid ONNX model" in err and len(err.strip().splitlines()) == 1

    flat = tmp_path / "flat.onnx"  # a real ONNX network whose input is a vector, not an image
    torch.onnx.export(torch.nn.Linear(16, 8).eval(), (torch.zeros(1, 16),), str(flat), dynamo=False)
    assert main([*_base_args(flat, faces_dir / "lfw", tmp_path / "out", "flat"), "--licence", "x"]) == 2
    err = capsys.readouterr().err
    assert "has rank 2, expected 4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "MANIFEST.json").exists()


# --- real networks --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models (symlinked) plus room for imports, so the device finds its detector."""
    shipped = default_models_dir()
    out = tmp_path_factory.mktemp("models")
    shutil.copy2(shipped / "MANIFEST.json", out / "MANIFEST.json")
    shutil.copytree(shipped / "golden", out / "golden")
    for e in load_manifest(shipped).values():
        (out / e.file).symlink_to(shipped / e.file)
    return out


def _import(args: list[str]) -> float:
    t = time.perf_counter()
    assert main(args) == 0
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def dlib_onnx(models_dir: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if MISSING:
        pytest.skip(f"the [build] extra is not installed ({', '.join(MISSING)})")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed (it ships the dlib .dat weights)")
    onnx = importkit.export_dlib(tmp_path_factory.mktemp("onnx") / "dlib_rebuild.onnx")
    _import(["models", "import", "--onnx", str(onnx), "--template", "dlib150", "--input", "rgb",
             "--mean", "0,0,0", "--std", "1,1,1", "--id", "dlibonnx", "--licence", "public domain (dlib, Davis King)",
             "--source", "models/dlib_resnet.py rebuild exported by torch.onnx",
             "--faces", str(faces_dir / "lfw"), "--models-dir", str(models_dir), "--calib", "32", "--held-out", "16"])  # fmt: skip
    return onnx


@pytest.fixture(scope="module")
def arc_onnx(models_dir: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if MISSING:
        pytest.skip(f"the [build] extra is not installed ({', '.join(MISSING)})")
    from edge.core.vision.align import ChipTemplate
    from models.import_onnx import ChipCutter, split_identities

    # Fitted on identities from the calibration half's far end: none of them is in the clip's cast.
    calib, _ = split_identities(faces_dir / "lfw")
    cast = {p.identity for p in videogen.default_cast(2)}
    fit, _ = ChipCutter(ChipTemplate.ARCFACE112, 112).chips([c for c in calib[-700:] if c[0] not in cast], 600)
    onnx = importkit.export_tiny_arcface(tmp_path_factory.mktemp("onnx") / "tinyarc.onnx", fit)
    args = _base_args(onnx, faces_dir / "lfw", models_dir, "tinyarc")
    args[args.index("--input") + 1] = "bgr"
    _import([*args, "--licence", "Apache-2.0 (test network)", "--calib", "64", "--held-out", "16", "--min-int8-cosine", "0.95"])
    return onnx


def _real_chips(template: str, size: int, n: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Chips of held-out identities, cut as the device cuts them (BlazeFace + template)."""
    from edge.core.vision.align import ChipTemplate
    from models.import_onnx import ChipCutter, split_identities
    from tests.conftest import faces_root

    _, held = split_identities(faces_root() / "lfw")
    chips, _ = ChipCutter(ChipTemplate(template), size).chips(held[200:], n)
    return chips


def test_dlib_rebuild_imported_from_onnx_gives_the_shipped_outputs_back(models_dir: Path, dlib_onnx: Path) -> None:
    from edge.core.vision.embed import Embedder

    chips = _real_chips("dlib150", 150, 48)
    shipped, mine = default_models_dir(), models_dir
    e = {
        # The networks' own descriptors (no test-time flip: that is the shipped scoring's choice).
        "ship_fp32": Embedder(load_model("dlib_resnet_v1_fp32", shipped)).embed(chips),
        "ship_int8": Embedder(load_model("dlib_resnet_v1_int8", shipped)).embed(chips),
        "fp32": Embedder(load_model("dlibonnx_fp32", mine)).embed(chips),
        "int8": Embedder(load_model("dlibonnx_int8", mine)).embed(chips),
    }

    def cos(a: str, b: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.sum(e[a] * e[b], axis=1)

    assert float(cos("fp32", "ship_fp32").min()) >= 0.999  # the same network, converted again
    assert float(cos("int8", "ship_int8").mean()) >= 0.999  # calibrated on fewer chips, yet close
    assert float(cos("int8", "ship_fp32").min()) >= 0.995  # the shipped int8's own gate

    m = load_manifest(mine)
    for mid in ("dlibonnx_fp32", "dlibonnx_int8"):
        raw = m[mid].raw
        assert raw["licence"] == "public domain (dlib, Davis King)"
        assert raw["source"]["sha256"] == sha256_file(dlib_onnx) and raw["source"]["file"] == dlib_onnx.name
        assert raw["template"] == "dlib150" and raw["chip_size"] == 150 and raw["dim"] == 128
        assert set(raw["built_with"]) >= {"torch", "onnx", "onnx2torch", "litert-torch", "ai-edge-quantizer"}
        assert raw["golden"]["input"] == "golden/astronaut_dlib150_150.png"
        assert raw["import_command"].startswith("lfr-edge models import --onnx dlib_rebuild.onnx --template dlib150")
        assert sha256_file(mine / raw["file"]) == raw["sha256"]
    assert len(m["dlibonnx_int8"].raw["calibration"]["identities"].split(", ")) == 32
    # The shipped entries were kept as they were.
    assert m["dlib_resnet_v1_int8"].raw == load_manifest(default_models_dir())["dlib_resnet_v1_int8"].raw


def test_arcface112_import_writes_its_contract_and_passes_verify(
    models_dir: Path, arc_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.core.vision.align import ChipTemplate
    from edge.core.vision.embed import ChannelOrder, Embedder

    raw = load_manifest(models_dir)["tinyarc_int8"].raw
    assert (raw["template"], raw["chip_size"], raw["dim"]) == ("arcface112", 112, importkit.ARC_DIM)
    assert raw["preprocess"] == {"channels": "bgr", "mean": [127.5] * 3, "std": [127.5] * 3}
    assert raw["input"]["dtype"] == "int8" and raw["input"]["shape"] == [1, 112, 112, 3]
    emb = Embedder.from_config(models_dir, "tinyarc_int8")
    assert (emb.template, emb.chip_size, emb.dim) == (ChipTemplate.ARCFACE112, 112, importkit.ARC_DIM)
    assert emb.spec.preprocess.channels is ChannelOrder.BGR
    assert main(["models", "verify", "--models-dir", str(models_dir), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert {"tinyarc_fp32", "tinyarc_int8"} <= set(rows)
    assert all(r["ok"] for r in rows.values())
    assert "golden cosine" in rows["tinyarc_int8"]["golden"]


def test_a_failed_import_leaves_the_models_folder_as_it_was(
    models_dir: Path, arc_onnx: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (models_dir / "MANIFEST.json").read_bytes()
    files = sorted(p.name for p in models_dir.iterdir())
    args = _base_args(arc_onnx, faces_dir / "lfw", models_dir, "tooexact")
    args[args.index("--input") + 1] = "bgr"
    # No int8 model is that close to its float original: the import must stop before writing.
    assert main([*args, "--licence", "test", "--calib", "8", "--held-out", "4", "--min-int8-cosine", "0.999999"]) == 1
    assert "int8 too far from fp32" in capsys.readouterr().err
    assert (models_dir / "MANIFEST.json").read_bytes() == before
    assert sorted(p.name for p in models_dir.iterdir()) == files  # no model files, no work folder left


def _cfg(models_dir: Path, embedder: str, threshold: float) -> Config:
    return parse_config({"models": {"dir": str(models_dir), "embedder": embedder},
                         "matching": {"threshold": threshold, "min_margin": 0.0, "cooldown_s": 60.0},
                         "camera": {"source": "dir:/nonexistent"}}, ROOT)  # fmt: skip


def test_arcface112_model_enrols_runs_the_loop_and_is_refused_elsewhere(
    models_dir: Path, arc_onnx: Path, faces_dir: Path, tmp_path: Path
) -> None:
    from edge.core.keys import generate_backoffice_keys, generate_device_keys
    from edge.core.vision.analyze import FaceAnalyzer
    from edge.core.watchlist.bundle import BundleError, build_bundle, verify_bundle
    from edge.core.watchlist.model import Watchlist
    from edge.device.pipeline import Pipeline, build_stages, run_loop
    from edge.device.pipeline_sinks import ListSink
    from edge.device.watchlist.store import WatchlistHolder, embedder_sha256_for

    truth = videogen.generate(faces_dir, tmp_path / "clip", 1280, 720, n_frames=45, fps=15.0, seed=0,
                              write_mp4=False)  # fmt: skip
    # Enrolment, as the back office does it, with the imported model, from the photos the clip
    # shows: the test network is too weak to recognise a person across different photos.
    cfg = _cfg(models_dir, "tinyarc_int8", 0.5)
    analyzer = FaceAnalyzer.from_config(cfg)
    lfw = faces_dir / "lfw"
    enrolled = list(truth["enrolled"])  # type: ignore[call-overload]
    rows = []
    for ident in enrolled:
        face = analyzer.primary(cv2.cvtColor(cv2.imread(str(lfw / ident / f"{ident}_0001.jpg")), cv2.COLOR_BGR2RGB))
        assert face is not None and face.embedding is not None and face.chip.shape == (112, 112, 3)
        assert face.embedding.shape == (importkit.ARC_DIM,)
        rows.append(face.embedding)
    templates = np.stack(rows)
    subjects = tuple(Subject(i, category="wanted") for i in enrolled)

    # The watchlist carries the model's sha256: a device running dlib refuses it, this one opens it.
    bo, dev = generate_backoffice_keys(tmp_path / "bo"), generate_device_keys(tmp_path / "dev")
    sha = embedder_sha256_for(cfg)
    assert sha == load_manifest(models_dir)["tinyarc_int8"].sha256
    data = build_bundle(subjects=subjects, templates=templates, template_subject=np.arange(len(enrolled)),
                        signer=bo.ed25519, recipients=[dev.x25519_public], version=3,
                        expires_at=time.time() + 3600, embedder_sha256=sha)  # fmt: skip
    dlib_sha = load_manifest(default_models_dir())["dlib_resnet_v1_int8"].sha256
    with pytest.raises(BundleError) as refused:
        verify_bundle(data, dev, [bo.ed25519_public], None, dlib_sha)
    assert "embedder" in str(refused.value)
    wl = verify_bundle(data, dev, [bo.ed25519_public], None, sha)
    assert wl.templates.shape == (len(enrolled), importkit.ARC_DIM)

    # The camera loop with the imported model: 112 px chips, 512-d track buffers, matching.
    stages = build_stages(cfg)
    assert stages.vision.embed_dim == importkit.ARC_DIM
    now = time.time()
    watchlist = Watchlist(3, now, now + 3600, wl.subjects, wl.templates, wl.template_subject)
    sink = ListSink()
    pipe = Pipeline(cfg, stages, WatchlistHolder(watchlist), sink)
    run_loop(pipe, f"dir:{tmp_path / 'clip' / 'frames'}")
    c = pipe.counters
    assert c.frames == truth["frames"] and c.faces_seen > 100 and c.embeddings > 20
    alerted = {e.match.subject.subject_id for e in sink.events}
    for e in sink.events:  # the right person was alerted on, not only the right name
        assert _person_at(truth, e.frame_seq, e.bbox) == e.match.subject.subject_id
    assert alerted == set(enrolled), f"alerted {sorted(alerted)}, enrolled {sorted(enrolled)}"
    assert not pipe.tracker.tracks


def test_eval_runs_on_the_imported_model(models_dir: Path, arc_onnx: Path, faces_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["eval", "--faces", str(faces_dir / "lfw"), "--limit", "200", "--variants", "tinyarc_int8",
                 "--align", "ours,mesh,dlib", "--scoring", "raw", "--models-dir", str(models_dir), "--impostors", "5000",
                 "--id-splits", "2", "--json"])  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert sorted(r["variants"]) == ["tinyarc_int8/mesh/raw", "tinyarc_int8/ours/raw"]  # dlib's chips are dlib150 only
    assert any("dlib alignment skipped" in n for n in r["notes"])
    for v in r["variants"].values():
        assert v["embedder"] == "tinyarc_int8"
        ver = v["verification"]
        assert ver["genuine_pairs"] > 20 and v["identification"]["mated_probes"] > 0
        # A weak recogniser, yet a recogniser: the same people score higher than strangers.
        assert ver["genuine_mean"] > ver["impostor_mean"]


def test_an_imported_model_gets_its_own_cohort_and_calibrated_operating_points(
    models_dir: Path, arc_onnx: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole of part B's promise: import, cohort, calibrate, and the device scores with it.
    (Last in this file: it gives tinyarc_int8 S-norm scoring, which the tests above do not expect.)"""
    from edge.core.vision.scoring import load_scoring
    from edge.core.watchlist.policy import policy_for

    assert main(["models", "cohort", "--embedder", "tinyarc_int8", "--faces", str(faces_dir / "lfw"),
                 "--models-dir", str(models_dir)]) == 0  # fmt: skip
    assert "cohort_tinyarc_int8" in capsys.readouterr().out
    code = main(["eval", "--faces", str(faces_dir / "lfw"), "--limit", "1700", "--variants", "tinyarc_int8",
                 "--align", "ours", "--scoring", "device", "--models-dir", str(models_dir), "--impostors", "5000",
                 "--id-splits", "2", "--calibrate", "--json"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    s = load_scoring("tinyarc_int8", models_dir)
    assert s.flip and s.norm is not None and s.norm.dim == 512 and s.units == "snorm"
    assert s.operating_point("strict").threshold > s.operating_point("balanced").threshold > s.floor
    cfg = _cfg(models_dir, "tinyarc_int8", 0.5).model_copy(
        update={"matching": parse_config({}, ROOT).matching}
    )  # the default: the strict point of the model in force
    assert policy_for(cfg).threshold == s.operating_point("strict").threshold
    assert main(["models", "verify", "--models-dir", str(models_dir)]) == 0  # the cohort is checked too


def _person_at(truth: Any, frame: int, bbox: Any) -> Any:
    """Which person of the clip's ground truth the alerted box covers."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    for ident, boxes in truth["boxes"].items():
        b = boxes[frame]
        if b is not None and b[0] <= cx <= b[2] and b[1] <= cy <= b[3]:
            return ident
    return None
