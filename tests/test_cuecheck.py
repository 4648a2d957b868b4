"""static/cuecheck.js (the editor's live cue indicators) against core/cue_rules.py `check_cues`:
the same random cues through both, under node, so the browser and the server cannot drift."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tests.test_cue_rules import RULES, codes
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue, round_ms

NODE = shutil.which("node") or "/usr/bin/node"
CUECHECK = Path(__file__).resolve().parent.parent / "vsrt_service" / "web" / "static" / "cuecheck.js"
pytestmark = pytest.mark.skipif(not Path(NODE).exists(), reason="needs node")

# Reads {"rules", "cues", "times"} on stdin; answers check_cues's codes and round_ms of the times.
SCRIPT = f"""
import {{ checkCues, roundMs }} from {json.dumps(CUECHECK.as_uri())};
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {{
  const {{ rules, cues, times }} = JSON.parse(input);
  // Frozen cues, as the editor's: checked twice, the second time from the per-cue cache.
  const frozen = cues.map((set) => set.map((c) => Object.freeze(c)));
  const check = () => frozen.map((set) => checkCues(set, rules).map((w) => [w.index, w.code]));
  const first = JSON.stringify(check());
  const cases = check();
  if (JSON.stringify(cases) !== first) throw new Error("the cached answers differ");
  process.stdout.write(JSON.stringify({{ cases, ms: times.map(roundMs) }}));
}});
"""

# Words, spaces the two languages' strip() treat differently, a non-BMP character.
PIECES = ["word", "a", "longerword", "ü", "日本", "😀", " ", "  ", "\n", "\xa0", "\x1f", "\u3000", "\ufeff"]


def node_check(rules: CueSettings, cue_sets: list[list[Cue]], times: list[float]) -> dict[str, Any]:
    payload = {
        "rules": asdict(rules),
        "cues": [[asdict(c) for c in cues] for cues in cue_sets],
        "times": times,
    }
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", SCRIPT],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


DASHES = ["- ", "- ", "-", "\u2013 ", " - "]


def random_speakers(rng: random.Random) -> tuple[str | None, tuple[str, ...]]:
    """No speaker, one, or a dialogue cue's (sometimes one person twice, or three lines)."""
    kind = rng.random()
    if kind < 0.4:
        return None, ()
    if kind < 0.7:
        return rng.choice(["SPEAKER_00", "Ann"]), ()
    return None, tuple(rng.choice(["A", "B"]) for _ in range(rng.choice([2, 2, 3])))


def random_cues(rng: random.Random) -> list[Cue]:
    cues = []
    t = rng.uniform(0, 5)
    for _ in range(rng.randint(1, 12)):
        t += rng.choice([0, 0.0005, 0.05, 0.0834, 0.5, rng.uniform(-1.5, 3)])
        t = max(0.0, t)
        length = rng.choice([0.0004, 0.05, 0.83, 0.8305, 7.0, 7.0005, rng.uniform(0.1, 9)])
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60)))
        speaker, speakers = random_speakers(rng)
        if speakers and rng.random() < 0.5:  # the dialogue form, or a near miss of it
            text = "\n".join(
                rng.choice(DASHES) + rng.choice(PIECES[:6]) for _ in range(rng.choice([2, 2, 3]))
            )
        start, end = round(t, rng.choice([3, 4, 6])), round(t + length, rng.choice([3, 4, 6]))
        cues.append(Cue(start, end, text, speaker, speakers))
        t += length
    return cues


def test_cuecheck_js_names_the_same_problems_as_check_cues() -> None:
    rng = random.Random(11)
    sets = [random_cues(rng) for _ in range(400)]
    tight = CueSettings(max_line_chars=12, max_lines=1, max_chars_per_second=9.5, min_gap_seconds=0.2)
    times = [rng.uniform(0, 8000) for _ in range(300)] + [0.0005, 1.2345, 3661.2346, 2.0005, 1e-7, 0.0015]
    en_dash = CueSettings(dialogue_dash="\u2013 ")
    for rules in (RULES, tight, en_dash):
        got = node_check(rules, sets, times)
        want = [[list(c) for c in codes(cues, rules)] for cues in sets]
        mismatched = [i for i, (a, b) in enumerate(zip(got["cases"], want, strict=True)) if a != b]
        assert not mismatched, (sets[mismatched[0]], got["cases"][mismatched[0]], want[mismatched[0]])
        assert sum(map(len, want)) > 400  # the random cues break every rule many times
        assert {code for case in want for _, code in case} == {
            "empty",
            "too_many_lines",
            "line_too_long",
            "too_fast",
            "too_short",
            "too_long",
            "overlap",
            "gap_too_small",
            "mixed_speakers",
        }
        assert got["ms"] == [round_ms(t) for t in times]
