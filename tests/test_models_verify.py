"""`lfr-edge models verify` accepts the shipped models and refuses a corrupted copy, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import InputError
from edge.inference import default_models_dir, load_manifest


@pytest.fixture(scope="module")
def shipped() -> Path:
    mdir = default_models_dir()
    try:
        manifest = load_manifest(mdir)
    except InputError as e:
        pytest.skip(f"no model manifest yet: {e}")
    if not manifest:
        pytest.skip("the manifest lists no models yet")
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
    copy = tmp_path / "models"
    copy.mkdir()
    manifest = load_manifest(shipped)
    shutil.copy2(shipped / "MANIFEST.json", copy / "MANIFEST.json")
    for entry in manifest.values():
        (copy / entry.file).symlink_to(shipped / entry.file)
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


def test_build_without_the_build_extra_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from edge.commands.models_cmd import BUILD_MODULES

    if all(importlib.util.find_spec(m) is not None for m in BUILD_MODULES):
        pytest.skip("the [build] extra is installed here; a test must not rebuild the models")
    assert main(["models", "build", "--only", "embedder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "[build] extra" in err
    assert len(err.strip().splitlines()) == 1


NO_TORCH = """
import sys
class Refuse:
    # The appliance has none of these: importing one must fail as it would on the device.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorflow", "dlib", "litert_torch", "ai_edge_quantizer"):
            raise ImportError(f"{name} is not installed on the device")
        return None
sys.meta_path.insert(0, Refuse())
from edge.cli import main
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
