"""JSON for large values (a 3-hour transcript: megabytes), to be run in a worker thread.

`json.loads` and `json.dumps` are one C call each, which holds the GIL from start to end: in
a thread, a 2 MB transcript still stalls the event loop for 0.1-0.2 s. These functions give
the same results, but walk the top `depth` levels of containers in Python, handing each item
below to the C codec; between items the thread lets the event loop run.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "loads"]

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: The C string scanner json.loads uses (not in typeshed's stubs).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def dumps(obj: Any, depth: int = 2) -> str:
    """`json.dumps(obj)`, character for character."""
    parts: list[str] = []
    _encode(obj, depth, parts)
    return "".join(parts)


def _encode(obj: Any, depth: int, parts: list[str]) -> None:
    if depth > 0 and isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        parts.append("{")
        for n, (key, value) in enumerate(obj.items()):
            parts.append(", " if n else "")
            parts.append(json.dumps(key))
            parts.append(": ")
            _encode(value, depth - 1, parts)
        parts.append("}")
    elif depth > 0 and isinstance(obj, list | tuple):
        parts.append("[")
        for n, value in enumerate(obj):
            parts.append(", " if n else "")
            _encode(value, depth - 1, parts)
        parts.append("]")
    else:
        parts.append(json.dumps(obj))


def loads(text: str | bytes | bytearray, depth: int = 2) -> Any:
    """`json.loads(text)` for UTF-8 text; raises json.JSONDecodeError (a ValueError) alike."""
    s = text.decode("utf-8") if isinstance(text, bytes | bytearray) else text
    value, end = _value(s, _skip(s, 0), depth)
    end = _skip(s, end)
    if end != len(s):
        raise json.JSONDecodeError("Extra data", s, end)
    return value


def _skip(s: str, i: int) -> int:
    match = _WS.match(s, i)
    return match.end() if match else i


def _value(s: str, i: int, depth: int) -> tuple[Any, int]:
    if depth > 0 and s.startswith("[", i):
        return _array(s, i + 1, depth - 1)
    if depth > 0 and s.startswith("{", i):
        return _object(s, i + 1, depth - 1)
    return _DECODER.raw_decode(s, i)


def _array(s: str, i: int, depth: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    i = _skip(s, i)
    if s.startswith("]", i):
        return out, i + 1
    while True:
        value, i = _value(s, i, depth)
        out.append(value)
        i = _skip(s, i)
        if s.startswith("]", i):
            return out, i + 1
        if not s.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)


def _object(s: str, i: int, depth: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    i = _skip(s, i)
    if s.startswith("}", i):
        return out, i + 1
    while True:
        if not s.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
        key, i = _scanstring(s, i + 1)
        i = _skip(s, i)
        if not s.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        out[key], i = _value(s, _skip(s, i + 1), depth)
        i = _skip(s, i)
        if s.startswith("}", i):
            return out, i + 1
        if not s.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)
