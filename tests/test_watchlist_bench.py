"""`lfr-edge bench match` runs end to end on a small size and reports what it promises (no timings asserted)."""

from __future__ import annotations

import json

import pytest

from edge.cli.main import main


def test_bench_match_json_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "match", "--sizes", "500,2000", "--probes", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["subjects"] for r in out["sizes"]] == [500, 2000]
    for r in out["sizes"]:
        assert r["top1_correct"] == 1.0  # every noisy probe finds its own subject
        assert r["load_s"] > 0 and r["ms_per_probe_p50"] > 0 and r["bundle_mb"] > 0
        if isinstance(r.get("faiss"), dict):
            assert r["faiss"]["top1_agreement"] == 1.0
    assert out["machine"] and out["date"]


def test_bench_match_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "match", "--sizes", "10,abc"]) == 2
    assert "--sizes" in capsys.readouterr().err
