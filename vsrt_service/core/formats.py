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
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from vsrt_service.core.cues import Cue, round_ms
from vsrt_service.core.text import is_cjk

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "cue_fields",
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
#: A WebVTT voice span's start tag, `<v Name>` or `<v.class Name>`: group 1 is the name.
_VTT_VOICE = re.compile(r"<v(?:\.[^\s>]*)?[ \t]+([^>]*)>")
_VTT_VOICE_END = re.compile(r"</v\s*>")
#: A dialogue line's dash, whichever convention: a hyphen or dash, then spaces.
_DIALOGUE_DASH = re.compile(r"^[-\u2010-\u2015]\s*")

#: Longest speaker label accepted from a client (a renamed speaker: "Dr. Ann Lee").
MAX_SPEAKER_CHARS = 64


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


def _voiced(lines: list[str], cue: Cue) -> list[str]:
    """The cue's (escaped) lines in voice spans: one span over all the lines of a
    one-speaker cue, one per line of a dialogue cue; none when nobody is known."""
    if not lines:
        return lines
    if cue.speakers:  # lines past the last speaker (an edited cue) stay with that speaker
        names = [cue.speakers[min(k, len(cue.speakers) - 1)] for k in range(len(lines))]
        return [f"<v {_vtt_escape(who)}>{line}</v>" for who, line in zip(names, lines, strict=True)]
    if cue.speaker is None:
        return lines
    out = list(lines)
    out[0] = f"<v {_vtt_escape(cue.speaker)}>{out[0]}"
    out[-1] += "</v>"
    return out


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: a "WEBVTT" header, then "HH:MM:SS.mmm --> HH:MM:SS.mmm" cues; speakers as
    voice spans (`<v SPEAKER_00>`)."""
    blocks = ["WEBVTT\n"]
    for cue in cues:
        timing = f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}"
        lines = _voiced([_vtt_escape(line) for line in _text_lines(cue.text)], cue)
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


def _turn_lines(cue: Cue) -> list[tuple[str | None, str]]:
    """(speaker, text) of each turn in a cue: one per line of a dialogue cue, its dash
    dropped; else the whole cue on one line."""
    lines = _text_lines(cue.text)
    if not cue.speakers:
        return [(cue.speaker, _join_lines(lines))] if lines else []
    last = len(cue.speakers) - 1
    return [(cue.speakers[min(k, last)], _DIALOGUE_DASH.sub("", line)) for k, line in enumerate(lines)]


def to_txt(cues: Sequence[Cue], speaker_labels: bool = False) -> str:
    """Plain text, one cue per line (a dialogue cue: one line per speaker, dashes kept), for
    reading or pasting elsewhere. `speaker_labels`: a transcript instead, one line per
    speaker turn, each starting "[SPEAKER_00] " (no dashes); lines of no known speaker
    stay one per cue."""
    if not speaker_labels:
        out = [
            line
            for cue in cues
            for line in (_text_lines(cue.text) if cue.speakers else [_join_lines(_text_lines(cue.text))])
        ]
        return "".join(line + "\n" for line in out)
    turns: list[tuple[str | None, list[str]]] = []
    for cue in cues:
        for speaker, text in _turn_lines(cue):
            if turns and speaker is not None and turns[-1][0] == speaker:
                turns[-1][1].append(text)
            else:
                turns.append((speaker, [text]))
    return "".join(
        ("" if speaker is None else f"[{speaker}] ") + _join_lines(parts) + "\n" for speaker, parts in turns
    )


def cue_fields(cue: Cue) -> dict[str, Any]:
    """A cue as `cues_from_json` reads it back (times as they are): what the user's saved cues
    and the editor's reflow carry, speakers included, so nothing of a cue is lost on the way."""
    out: dict[str, Any] = {"start": cue.start, "end": cue.end, "text": cue.text}
    if cue.speaker is not None:
        out["speaker"] = cue.speaker
    if cue.speakers:
        out["speakers"] = list(cue.speakers)
    return out


def _cue_dict(index: int, cue: Cue) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "start": round_ms(cue.start) / 1000,
        "end": round_ms(cue.end) / 1000,
        "text": cue.text,
    }
    if cue.speaker is not None:
        out["speaker"] = cue.speaker
    if cue.speakers:
        out["speakers"] = list(cue.speakers)
    return out


def to_json(cues: Sequence[Cue], meta: Mapping[str, Any]) -> str:
    """`{**meta, "cues": [{index, start, end, text, speaker?, speakers?}]}`, indented, UTF-8
    text kept as is. `speaker` only where known; `speakers` (one per line) only on a
    dialogue cue. Words in the meta's segments carry their own `speaker`."""
    payload = {**meta, "cues": [_cue_dict(i, cue) for i, cue in enumerate(cues, start=1)]}
    return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"


_WRITERS: dict[str, Callable[[Sequence[Cue], Mapping[str, Any], bool], str]] = {
    "srt": lambda cues, _meta, _labels: to_srt(cues),
    "vtt": lambda cues, _meta, _labels: to_vtt(cues),
    "json": lambda cues, meta, _labels: to_json(cues, meta),
    "txt": lambda cues, _meta, labels: to_txt(cues, labels),
}


def render(
    fmt: str, cues: Sequence[Cue], meta: Mapping[str, Any] | None = None, *, speaker_labels: bool = False
) -> str:
    """The cues in the named format (one of FORMATS, any case, a leading dot allowed).
    `speaker_labels` (the job option) makes TXT a transcript with "[SPEAKER_00] " turns; the
    subtitle formats keep the conventions (dialogue dashes, VTT voices, JSON fields)."""
    key = fmt.strip().lower().lstrip(".") if isinstance(fmt, str) else ""
    writer = _WRITERS.get(key)
    if writer is None:
        raise ValueError(f"unknown subtitle format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return writer(cues, meta or {}, speaker_labels)


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
    cues[-1] = replace(last, text=text)


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


def _vtt_voices(lines: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """A cue's speaker (all its voiced lines say one name) or its speakers, one per line
    (several names), from voice spans; a span left open lasts to the cue's end."""
    names: list[str | None] = []
    current: str | None = None
    for line in lines:
        opens = list(_VTT_VOICE.finditer(line))
        names.append(html.unescape(opens[0].group(1)).strip() or None if opens else current)
        closes = list(_VTT_VOICE_END.finditer(line))
        if opens and not (closes and closes[-1].start() > opens[-1].start()):
            current = html.unescape(opens[-1].group(1)).strip() or None
        elif closes:
            current = None
    known = [n for n in names if n is not None]
    if len(set(known)) <= 1:
        return (known[0] if known else None), ()
    filled: list[str] = []
    for name in names:  # a line without a voice goes with the line before (or after)
        filled.append(name if name is not None else filled[-1] if filled else known[0])
    return None, tuple(filled)


def parse_vtt(text: str) -> list[Cue]:
    """Cues of a WebVTT file (header, NOTE, STYLE and REGION blocks skipped, cue settings
    ignored), speakers read from voice spans (`<v Name>`); a malformed timing line raises
    ValueError with its line number."""
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
        speaker, speakers = _vtt_voices(block[timing_at + 1 :])
        cues.append(Cue(start, end, "\n".join(body), speaker, speakers))
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


def _speaker_name(value: Any, where: str) -> str:
    """A speaker label from a client: a short, printable, non-blank string (stripped)."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    name = value.strip()
    if not name:
        raise ValueError(f"{where}: must not be blank")
    if len(name) > MAX_SPEAKER_CHARS:
        raise ValueError(f"{where}: at most {MAX_SPEAKER_CHARS} characters, got {len(name)}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError(f"{where}: must not hold control characters")
    return name


def _speakers(item: Mapping[str, Any], where: str) -> tuple[str | None, tuple[str, ...]]:
    """A cue's optional `speaker`, or `speakers` (one per line of a dialogue cue)."""
    raw = item.get("speaker")
    speaker = None if raw is None else _speaker_name(raw, f"{where}.speaker")
    many = item.get("speakers")
    if many is None or many == []:
        return speaker, ()
    if not isinstance(many, list):
        raise ValueError(f"{where}.speakers: expected a list of names, got {type(many).__name__}")
    if not 2 <= len(many) <= 5:
        raise ValueError(f"{where}.speakers: at least two and at most 5 names, one per line")
    speakers = tuple(_speaker_name(n, f"{where}.speakers[{k}]") for k, n in enumerate(many))
    if speaker is not None:
        raise ValueError(f"{where}: give speaker or speakers, not both")
    return None, speakers


def cues_from_json(items: Any) -> list[Cue]:
    """Validated cues from a JSON value: a list of {"start", "end", "text", "speaker"?,
    "speakers"?} objects (or an object holding one under "cues"). Errors name the cue's
    index and the field at fault."""
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
        speaker, speakers = _speakers(item, where)
        cues.append(Cue(start, end, text.replace("\r\n", "\n").replace("\r", "\n"), speaker, speakers))
    return cues
