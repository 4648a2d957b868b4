"""Subtitle file formats: SRT, WebVTT, JSON and plain text, written and read back.

Pure Python, standard library only. Writers take `Cue`s (times in seconds) and round
every time to whole milliseconds, half up (3661.2346 s -> 01:01:01,235), so a cue never
shows 1000 ms. Readers are tolerant of what editors and other tools produce (a BOM,
CRLF line ends, a missing final newline, extra blank lines) and name the line at fault
when a timing line cannot be read.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vsrt_service.core.cues import Cue, round_ms
from vsrt_service.core.text import is_cjk

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "cues_from_json",
    "parse_srt",
    "parse_vtt",
    "render",
    "to_json",
    "to_srt",
    "to_txt",
    "to_vtt",
]

FORMATS = ("srt", "vtt", "json", "txt")

#: Content type of each format, for HTTP downloads.
MEDIA_TYPES = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING_LINE = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s.*)?$")
_VTT_TAG = re.compile(r"<[^>]*>")


# --- writing -----------------------------------------------------------------------------


def _clock(seconds: float, separator: str) -> str:
    """HH:MM:SS<sep>mmm from seconds; negative times are shown as 0, hours may exceed 99."""
    ms = max(0, round_ms(seconds))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _text_lines(text: str) -> list[str]:
    """A cue's lines without the blank ones, which would end the cue in SRT and WebVTT."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.rstrip() for line in lines if line.strip()]


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered blocks "HH:MM:SS,mmm --> HH:MM:SS,mmm", a blank line between them."""
    blocks = []
    for index, cue in enumerate(cues, start=1):
        timing = f"{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}"
        blocks.append("\n".join([str(index), timing, *_text_lines(cue.text)]) + "\n")
    return "\n".join(blocks)


def _vtt_escape(line: str) -> str:
    """WebVTT cue text must not hold a raw "&", "<" or ">" (nor so the sequence "-->")."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: a "WEBVTT" header, then "HH:MM:SS.mmm --> HH:MM:SS.mmm" cues."""
    blocks = ["WEBVTT\n"]
    for cue in cues:
        timing = f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}"
        lines = [_vtt_escape(line) for line in _text_lines(cue.text)]
        blocks.append("\n".join([timing, *lines]) + "\n")
    return "\n".join(blocks)


def _join_lines(lines: Sequence[str]) -> str:
    """A cue's lines on one line: joined by a space, except between two CJK characters."""
    out = ""
    for line in lines:
        line = line.strip()
        if out and not (is_cjk(out[-1]) and is_cjk(line[:1])):
            out += " "
        out += line
    return out


def to_txt(cues: Sequence[Cue]) -> str:
    """Plain text, one cue per line, for reading or pasting elsewhere."""
    lines = [_join_lines(_text_lines(cue.text)) for cue in cues]
    return "".join(line + "\n" for line in lines)


def _cue_dict(index: int, cue: Cue) -> dict[str, Any]:
    return {
        "index": index,
        "start": round_ms(cue.start) / 1000,
        "end": round_ms(cue.end) / 1000,
        "text": cue.text,
    }


def to_json(cues: Sequence[Cue], meta: Mapping[str, Any]) -> str:
    """`{**meta, "cues": [{index, start, end, text}]}`, indented, UTF-8 text kept as is."""
    payload = {**meta, "cues": [_cue_dict(i, cue) for i, cue in enumerate(cues, start=1)]}
    return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"


_WRITERS: dict[str, Callable[[Sequence[Cue], Mapping[str, Any]], str]] = {
    "srt": lambda cues, _meta: to_srt(cues),
    "vtt": lambda cues, _meta: to_vtt(cues),
    "json": to_json,
    "txt": lambda cues, _meta: to_txt(cues),
}


def render(fmt: str, cues: Sequence[Cue], meta: Mapping[str, Any] | None = None) -> str:
    """The cues in the named format (one of FORMATS, any case, a leading dot allowed)."""
    key = fmt.strip().lower().lstrip(".") if isinstance(fmt, str) else ""
    writer = _WRITERS.get(key)
    if writer is None:
        raise ValueError(f"unknown subtitle format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return writer(cues, meta or {})


# --- reading -----------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """The text's lines without a BOM, whatever the line ends."""
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _seconds(groups: Sequence[str | None]) -> float:
    """Seconds from the regex groups of one timestamp (hours optional; ms may be short)."""
    hours, minutes, secs, frac = groups
    ms = int((frac or "0").ljust(3, "0"))
    total = int(hours or 0) * 3_600_000 + int(minutes or 0) * 60_000 + int(secs or 0) * 1000 + ms
    return total / 1000


def _timing(line: str, number: int) -> tuple[float, float]:
    """Start and end of a "start --> end" line, or a ValueError naming the line."""
    match = _TIMING_LINE.match(line)
    if match is None:
        raise ValueError(f"line {number}: malformed timing line {line.strip()!r}")
    groups = match.groups()
    return _seconds(groups[:4]), _seconds(groups[4:8])


def _blocks(lines: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Runs of non-blank lines, each with the (0-based) index of its first line."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for k, line in enumerate(lines):
        if line.strip():
            if not current:
                first = k
            current.append(line.rstrip())
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


def _append_text(cues: list[Cue], lines: Sequence[str]) -> None:
    """Text after a blank line inside a cue belongs to that cue (a common editing slip)."""
    last = cues[-1]
    text = "\n".join([last.text, *lines]) if last.text else "\n".join(lines)
    cues[-1] = Cue(last.start, last.end, text)


def parse_srt(text: str) -> list[Cue]:
    """Cues of a SubRip file. Cue numbers are optional and not checked; a malformed timing
    line raises ValueError with its line number."""
    cues: list[Cue] = []
    for first, block in _blocks(_lines(text)):
        head = block[0].strip()
        if "-->" in head:
            timing_at = 0
        elif head.isdigit() and len(block) > 1:
            timing_at = 1
        elif cues:
            _append_text(cues, block)
            continue
        else:
            raise ValueError(f"line {first + 1}: expected a cue number or a timing line")
        start, end = _timing(block[timing_at], first + timing_at + 1)
        cues.append(Cue(start, end, "\n".join(block[timing_at + 1 :])))
    return cues


def _vtt_text(line: str) -> str:
    """Cue text as shown: tags (<i>, <v Speaker>, <00:01.000>) dropped, entities decoded."""
    return html.unescape(_VTT_TAG.sub("", line))


def parse_vtt(text: str) -> list[Cue]:
    """Cues of a WebVTT file (header, NOTE, STYLE and REGION blocks skipped, cue settings
    ignored); a malformed timing line raises ValueError with its line number."""
    cues: list[Cue] = []
    blocks = _blocks(_lines(text))
    if blocks and blocks[0][1][0].startswith("WEBVTT"):
        first, header = blocks[0]
        timing_lines = [k for k, line in enumerate(header) if "-->" in line]
        if not timing_lines:
            blocks = blocks[1:]
        else:  # no blank line after the header: the first cue starts at its timing line
            blocks[0] = (first + timing_lines[0], header[timing_lines[0] :])
    for first, block in blocks:
        head = block[0].strip()
        if head.startswith(("NOTE", "STYLE", "REGION")) and "-->" not in head:
            continue
        if "-->" in head:
            timing_at = 0
        elif len(block) > 1:
            timing_at = 1  # a cue identifier first
        elif cues:
            _append_text(cues, [_vtt_text(line) for line in block])
            continue
        else:
            raise ValueError(f"line {first + 1}: expected a cue identifier or a timing line")
        start, end = _timing(block[timing_at], first + timing_at + 1)
        body = [_vtt_text(line) for line in block[timing_at + 1 :]]
        cues.append(Cue(start, end, "\n".join(body)))
    return cues


# --- user-edited cues ----------------------------------------------------------------------


#: Latest cue time accepted from a client (100 hours): far past any real media, and small
#: enough that every later conversion (float, milliseconds, clock text) stays exact.
MAX_CUE_SECONDS = 360_000


def _time_field(item: Mapping[str, Any], field: str, where: str) -> float:
    """A cue's start or end: present, a finite number (not a bool), 0 to MAX_CUE_SECONDS."""
    if field not in item:
        raise ValueError(f"{where}: missing field {field!r}")
    value = item[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{field}: expected a number of seconds, got {_short(value)}")
    try:
        seconds = float(value)  # an int past float's range (JSON allows any length) overflows
    except OverflowError:
        raise ValueError(f"{where}.{field}: the number is too large") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{where}.{field}: expected a finite number, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{where}.{field}: must not be negative, got {value!r}")
    if seconds > MAX_CUE_SECONDS:
        raise ValueError(f"{where}.{field}: must be at most {MAX_CUE_SECONDS} seconds, got {_short(value)}")
    return seconds


def _short(value: Any) -> str:
    """A value for an error message, cut short (a client may send anything)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def cues_from_json(items: Any) -> list[Cue]:
    """Validated cues from a JSON value: a list of {"start", "end", "text"} objects (or an
    object holding one under "cues"). Errors name the cue's index and the field at fault."""
    if isinstance(items, Mapping) and "cues" in items:
        items = items["cues"]
    if not isinstance(items, list):
        raise ValueError(f"cues: expected a list of cues, got {type(items).__name__}")
    cues: list[Cue] = []
    for index, item in enumerate(items):
        where = f"cues[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        start = _time_field(item, "start", where)
        end = _time_field(item, "end", where)
        if "text" not in item:
            raise ValueError(f"{where}: missing field 'text'")
        text = item["text"]
        if not isinstance(text, str):
            raise ValueError(f"{where}.text: expected a string, got {type(text).__name__}")
        if round_ms(end) <= round_ms(start):
            raise ValueError(f"{where}.end: must be after start ({end!r} <= {start!r})")
        cues.append(Cue(start, end, text.replace("\r\n", "\n").replace("\r", "\n")))
    return cues
