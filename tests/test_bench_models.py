"""`lfr-edge bench models` reports per-model figures for each thread count (no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from edge.cli.main import main
from edge.core.inference import default_models_dir, load_manifest


def test_bench_models_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert "dlib_resnet_v1_int8" in load_manifest(default_models_dir())  # shipped
    code = main(["bench", "models", "--json", "--repeats", "3", "--warmup", "1",
                 "--only", "dlib_resnet_v1_int8"])  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["runtime"] in ("ai-edge-litert", "tflite-runtime")
    assert [m["id"] for m in r["models"]] == ["dlib_resnet_v1_int8"]
    runs = r["models"][0]["runs"]
    assert [x["threads"] for x in runs] == [1, 2]
    for x in runs:
        assert 0 < x["min_ms"] <= x["median_ms"] <= x["p95_ms"] and x["n"] == 3


def test_bench_models_refuses_bad_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "models", "--threads", "two"]) == 2
    assert "--threads" in capsys.readouterr().err
