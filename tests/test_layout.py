"""The house's layering holds: core imports nothing outside core, the device never imports the back
office (or the lab), and the back office never imports the device (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "edge"

# What each layer may import from edge (besides itself).
ALLOWED = {
    "edge.core": {"edge.core"},
    "edge.device": {"edge.core", "edge.device"},
    "edge.backoffice": {"edge.core", "edge.backoffice"},
    "edge.lab": {"edge.core", "edge.device", "edge.backoffice", "edge.lab"},
    "edge.cli": {"edge.core", "edge.device", "edge.backoffice", "edge.lab", "edge.cli"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and parts[0] == "edge" else None


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_every_module_lives_in_a_layer() -> None:
    loose = sorted(
        str(p.relative_to(EDGE.parent))
        for p in EDGE.glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    assert loose == [], f"modules outside core/device/backoffice/lab/cli: {loose}"


def test_layers_import_only_what_they_may() -> None:
    wrong: list[str] = []
    for path in EDGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module = ".".join(path.relative_to(EDGE.parent).with_suffix("").parts)
        layer = _layer(module)
        if layer not in ALLOWED:
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target is not None and target in ALLOWED and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == [], "\n".join(sorted(wrong))


def test_the_running_appliance_loads_no_back_office_or_lab_code() -> None:
    code = (
        "import sys, edge.device.service, edge.cli.run;"
        "bad = sorted(m for m in sys.modules if m.startswith(('edge.backoffice', 'edge.lab')));"
        "print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"a device run imports: {out}"
