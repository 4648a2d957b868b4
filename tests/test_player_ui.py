"""The player and the waveform in a real browser (Debian's chromium via Playwright) against a
real `vsrt serve`: the job's media played with the cues over it, the playhead driving the
active cue, seeks from clicks, keys at the playhead, region edges dragged with the mouse, the
HEVC fallback to the audio copy, and the vendored wavesurfer.js checked against its pins.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from tests.ui_helpers import ROOT

pytestmark = [pytest.mark.timeout(300), pytest.mark.block_limit(2.0)]

STATIC = ROOT / "vsrt_service" / "web" / "static"
VENDOR = STATIC / "vendor" / "wavesurfer"
PINS = ROOT / "vsrt_service" / "web" / "vendor"

# --- the vendored library ------------------------------------------------------------------------


def test_vendored_wavesurfer_matches_its_pins_and_checksums() -> None:
    sums = (VENDOR / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in sums:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == on_disk, "SHA256SUMS lists other files than the vendored ones"
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name

    # Pinned: an exact version in package.json, the same one locked with its integrity, the
    # same one vendored; the script installs from the lock without running package scripts.
    version = json.loads((PINS / "package.json").read_text())["dependencies"]["wavesurfer.js"]
    assert re.fullmatch(r"7\.\d+\.\d+", version), version
    locked = json.loads((PINS / "package-lock.json").read_text())["packages"]["node_modules/wavesurfer.js"]
    assert locked["version"] == version and locked["integrity"].startswith("sha512-")
    assert (VENDOR / "VERSION").read_text().strip() == version
    script = (ROOT / "scripts" / "vendor-ui.sh").read_text()
    assert "npm ci --ignore-scripts" in script and "npm install" not in script
