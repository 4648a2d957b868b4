"""Checks of a browser library vendored from npm by scripts/vendor-ui.sh (its pins, lock and
checksums), shared by the tests of each library the UI serves."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "vsrt_service" / "web" / "vendor"


def check_vendored(vendor: Path, package: str, major: int) -> str:
    """The files in `vendor` are exactly those its SHA256SUMS lists, with those digests, and
    they are `package` at the exact version package.json pins and the lock holds with its
    integrity; returns that version."""
    listed: dict[str, str] = {}
    for line in (vendor / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == on_disk, "SHA256SUMS lists other files than the vendored ones"
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    version: str = json.loads((PINS / "package.json").read_text())["dependencies"][package]
    assert re.fullmatch(rf"{major}\.\d+\.\d+", version), version
    locked = json.loads((PINS / "package-lock.json").read_text())["packages"][f"node_modules/{package}"]
    assert locked["version"] == version and locked["integrity"].startswith("sha512-")
    assert (vendor / "VERSION").read_text().strip() == version
    # The script installs from the lock without running the packages' scripts.
    script = (ROOT / "scripts" / "vendor-ui.sh").read_text()
    assert "npm ci --ignore-scripts" in script and "npm install" not in script
    return version
