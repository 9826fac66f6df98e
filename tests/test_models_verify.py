"""`lfr-edge models verify` accepts the shipped models and refuses a corrupted copy, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.core.inference import default_models_dir, load_manifest


@pytest.fixture(scope="module")
def shipped() -> Path:
    mdir = default_models_dir()
    assert load_manifest(mdir), f"{mdir}/MANIFEST.json lists the shipped models"
    return mdir


def test_verify_passes_on_shipped_models(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "--models-dir", str(shipped), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True
    assert r["runtime"] in ("ai-edge-litert", "tflite-runtime")
    ids = {m["id"] for m in r["models"]}
    assert ids == set(load_manifest(shipped))
    for m in r["models"]:
        assert m["ok"] and m["inference"]["outputs"], m
    # The human-readable form names the runtime too.
    assert main(["models", "verify", "--models-dir", str(shipped)]) == 0
    assert "runtime:" in capsys.readouterr().out


def test_verify_refuses_one_flipped_byte(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy_models(shipped, tmp_path / "models")
    manifest = load_manifest(shipped)
    victim = sorted(manifest.values(), key=lambda e: e.id)[0]
    target = copy / victim.file
    data = bytearray((shipped / victim.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    target.unlink()
    target.write_bytes(bytes(data))

    assert main(["models", "verify", "--models-dir", str(copy)]) == 2
    captured = capsys.readouterr()
    assert str(target) in captured.err and "sha256" in captured.err
    assert "BAD" in captured.out and victim.id in captured.out
    # Only the corrupted file is blamed.
    blamed = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(blamed) == 1


def test_verify_reports_a_missing_file(shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "models"
    copy.mkdir()
    shutil.copy2(shipped / "MANIFEST.json", copy / "MANIFEST.json")
    assert main(["models", "verify", "--models-dir", str(copy)]) == 2
    assert "file missing" in capsys.readouterr().err


def test_build_and_import_without_the_build_extra_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    # A None entry in sys.modules makes find_spec report the package absent, installed or not.
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    assert main(["models", "build", "--only", "embedder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "[build] extra" in err and "litert_torch" in err
    assert len(err.strip().splitlines()) == 1

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    (tmp_path / "labels.csv").write_text("path,identity\n")
    assert main(["models", "import", "--onnx", str(onnx), "--template", "arcface112", "--input", "rgb",
                 "--mean", "0,0,0", "--std", "1,1,1", "--id", "mine", "--licence", "test",
                 "--faces", str(tmp_path), "--models-dir", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: the [build] extra is missing") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


NO_TORCH = """
import sys
class Refuse:
    # The appliance has none of these: importing one must fail as it would on the device.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorflow", "dlib", "litert_torch", "ai_edge_quantizer"):
            raise ImportError(f"{name} is not installed on the device")
        return None
sys.meta_path.insert(0, Refuse())
from edge.cli.main import main
rc = main(sys.argv[1:])
assert not any(m.split(".")[0] in ("torch", "tensorflow", "dlib") for m in sys.modules)
sys.exit(rc)
"""


def test_verify_passes_without_torch_tensorflow_or_dlib() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "models", "verify"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dlib_resnet_v1_int8" in r.stdout and "blazeface_full_range_int8" in r.stdout


# --- values, not only hashes --------------------------------------------------------------------


def _copy_models(shipped: Path, dst: Path) -> Path:
    """A models folder of symlinks to the shipped files, with its own MANIFEST.json and golden/."""
    dst.mkdir()
    shutil.copy2(shipped / "MANIFEST.json", dst / "MANIFEST.json")
    shutil.copytree(shipped / "golden", dst / "golden")
    for entry in load_manifest(shipped).values():
        (dst / entry.file).symlink_to(shipped / entry.file)
    return dst


def _edit_manifest(mdir: Path, model_id: str, edit: object) -> None:
    data = json.loads((mdir / "MANIFEST.json").read_text())
    for m in data["models"]:
        if m["id"] == model_id:
            edit(m)  # type: ignore[operator]
    (mdir / "MANIFEST.json").write_text(json.dumps(data, indent=2))


def _blamed(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_every_shipped_model_has_a_golden_output_and_matches_it(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "--models-dir", str(shipped), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    for r in rows:
        if r["role"] == "cohort":  # score-normalisation data, not a network: checked by hash and shape
            assert "cohort of" in r["golden"], r
            continue
        assert "golden" in r and any(w in r["golden"] for w in ("cosine", "IoU", "landmark error")), r
    for entry in load_manifest(shipped).values():
        if entry.role == "cohort":
            continue
        g = entry.raw["golden"]
        assert (shipped / g["input"]).exists()
        assert g["input"].startswith("golden/astronaut")  # public-domain image, never LFW


def test_a_model_that_computes_garbage_fails_verify(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights overwritten and the manifest's sha256 updated to match: only the values can tell."""
    import numpy as np

    from edge.core.inference import sha256_file

    mdir = _copy_models(shipped, tmp_path / "models")
    victim = "dlib_resnet_v1_int8"
    entry = load_manifest(shipped)[victim]
    data = bytearray((shipped / entry.file).read_bytes())
    # Overwrite the stem conv's int8 filters (found by their bytes, so the flatbuffer's structure
    # stays intact) with seeded noise: the file loads and runs, and computes something else.
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(shipped / entry.file))
    convs = [d for d in it.get_tensor_details() if len(d["shape"]) == 4 and d["dtype"] == np.int8
             and int(d["shape"][0]) == 32 and int(d["shape"][1]) == 7]  # fmt: skip
    assert convs, "no 32x7x7x3 int8 stem filters in the int8 embedder"
    weights = it.get_tensor(convs[0]["index"]).tobytes()
    lo = bytes(data).find(weights)
    assert lo > 0
    data[lo : lo + len(weights)] = np.random.default_rng(0).integers(-127, 128, len(weights), dtype=np.int8).tobytes()
    target = mdir / entry.file
    target.unlink()
    target.write_bytes(bytes(data))
    _edit_manifest(mdir, victim, lambda m: m.update(sha256=sha256_file(target)))

    assert main(["models", "verify", "--models-dir", str(mdir)]) == 2
    captured = capsys.readouterr()
    blamed = _blamed(captured.err)
    assert len(blamed) == 1, captured.err
    assert victim in blamed[0] and "golden cosine" in blamed[0] and "below 0.995" in blamed[0]


def test_a_wrong_recorded_output_fails_verify(shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from edge.core.golden import encode_vector

    mdir = _copy_models(shipped, tmp_path / "models")
    other = np.random.default_rng(1).standard_normal(128).astype(np.float32)
    _edit_manifest(mdir, "dlib_resnet_v1_fp32",
                   lambda m: m["golden"].update(embedding_f32_b64=encode_vector(other / np.linalg.norm(other))))  # fmt: skip

    def shift(m: dict[str, object]) -> None:
        face = m["golden"]["faces"][0]  # type: ignore[index]
        face["box"] = [v + 40.0 for v in face["box"]]

    _edit_manifest(mdir, "blazeface_short_range_int8", shift)
    assert main(["models", "verify", "--models-dir", str(mdir)]) == 2
    blamed = _blamed(capsys.readouterr().err)
    assert len(blamed) == 2
    assert any("dlib_resnet_v1_fp32" in b and "golden cosine" in b for b in blamed)
    assert any("blazeface_short_range_int8" in b and "golden IoU" in b for b in blamed)


def test_a_missing_golden_block_or_input_fails_verify(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdir = _copy_models(shipped, tmp_path / "models")
    _edit_manifest(mdir, "blazeface_full_range_fp32", lambda m: m.pop("golden"))
    (mdir / "golden" / "astronaut_dlib150_150.png").unlink()
    assert main(["models", "verify", "--models-dir", str(mdir)]) == 2
    blamed = _blamed(capsys.readouterr().err)
    assert any("blazeface_full_range_fp32" in b and "no golden output recorded" in b for b in blamed)
    assert sum("golden input missing" in b for b in blamed) == 2  # both dlib variants use that chip


def test_the_shipped_face_mesh_gets_a_golden_check(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The face mesh places the chips' points: it is checked against its golden output like the rest."""
    import numpy as np

    from edge.core.golden import decode_vector, encode_vector

    mdir = _copy_models(shipped, tmp_path / "models")
    models = json.loads((mdir / "MANIFEST.json").read_text())["models"]
    entry = next(m for m in models if m["id"] == "face_mesh_fp32")
    assert entry["role"] == "landmarks" and entry["licence"] == "Apache-2.0"
    assert entry["golden"]["input"] == "golden/astronaut_mesh_192.png"
    assert main(["models", "verify", "--models-dir", str(mdir), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert "golden landmark error 0.0000" in rows["face_mesh_fp32"]["golden"]

    # Landmarks shifted by 3 px (1.6 % of the crop) are refused.
    want = decode_vector(entry["golden"]["landmarks_f32_b64"], "test") + np.float32(3.0)
    _edit_manifest(mdir, "face_mesh_fp32", lambda m: m["golden"].update(landmarks_f32_b64=encode_vector(want)))
    assert main(["models", "verify", "--models-dir", str(mdir)]) == 2
    blamed = _blamed(capsys.readouterr().err)
    assert len(blamed) == 1 and "face_mesh_fp32" in blamed[0] and "golden landmark error" in blamed[0]
