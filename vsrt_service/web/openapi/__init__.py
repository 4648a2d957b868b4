"""The OpenAPI 3.1 description of every API the app serves, from one YAML fragment per API.

Each API's module keeps its description beside it as `<api>.yaml` in this folder (`api.yaml`:
vsrt's /api, `openai.yaml`, `asr.yaml`), holding only `paths` and `components`; `document()`
unites them under one `info`, `servers` and security scheme. A path or component named by two
fragments is an error, so one API can never silently redefine another's.
"""

from __future__ import annotations

import copy
import functools
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

#: What a fragment may hold; anything else (info, servers, security) is the merged document's.
FRAGMENT_KEYS = frozenset({"paths", "components"})

DESCRIPTION = """\
vsrt turns video and audio into subtitles (Whisper speech recognition with word alignment).
It serves three APIs from one process: its own under `/api`, an OpenAI-compatible one under
`/v1` and a whisper-asr-webservice-compatible one (`/asr`, `/detect-language`). Every job any
of them makes is an ordinary vsrt job: listed, resumable, with live events.

Errors under `/api` are `{"error": {"code", "message", "field"?}}`; the other APIs answer in
their own clients' shapes. When the server has `server.auth_token` set, every route but
`/api/health`, this description and its docs page needs it as a bearer token (for `/v1`, it is
the API key); event streams also take a one-use `ticket` and media a `grant` in the query."""


class FragmentError(ValueError):
    """A fragment that cannot be merged: bad shape, or a name another fragment already has."""


def _version() -> str:
    try:
        return metadata.version("vsrt")
    except metadata.PackageNotFoundError:
        return "unknown"


def merge(fragments: dict[str, Any], version: str) -> dict[str, Any]:
    """One OpenAPI document from `{fragment name: parsed fragment}`: paths and every section of
    components united; a duplicate is a FragmentError naming both fragments."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "vsrt", "version": version, "description": DESCRIPTION},
        # Relative to this document (/api/openapi.json): the app's root, also when mounted
        # under a prefix as a sub-app.
        "servers": [{"url": "..", "description": "this server"}],
        "security": [{"bearer": []}],
        "paths": {},
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`server.auth_token`; needed only when the server has one set.",
                }
            }
        },
    }
    owner: dict[tuple[str, ...], str] = {("securitySchemes", "bearer"): "vsrt"}
    for name, fragment in sorted(fragments.items()):
        if not isinstance(fragment, dict):
            raise FragmentError(f"{name}: a fragment is a mapping with paths and components")
        extra = set(fragment) - FRAGMENT_KEYS
        if extra:
            raise FragmentError(f"{name}: a fragment holds only paths and components, not {sorted(extra)}")
        for path, item in (fragment.get("paths") or {}).items():
            if path in doc["paths"]:
                raise FragmentError(f"{name}: path {path} is already described by {owner[('paths', path)]}")
            owner[("paths", path)] = name
            doc["paths"][path] = copy.deepcopy(item)
        for section, entries in (fragment.get("components") or {}).items():
            target = doc["components"].setdefault(section, {})
            for key, value in (entries or {}).items():
                if key in target:
                    raise FragmentError(
                        f"{name}: components.{section}.{key} is already defined by {owner[(section, key)]}"
                    )
                owner[(section, key)] = name
                target[key] = copy.deepcopy(value)
    return doc


def load_fragments(folder: Path = HERE) -> dict[str, Any]:
    """Every `*.yaml` in `folder`, parsed, by file name."""
    return {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.yaml"))}


@functools.cache
def document() -> dict[str, Any]:
    """The merged description, built once (blocking file reads: call it in a thread). Callers
    must not change it."""
    return merge(load_fragments(), _version())
