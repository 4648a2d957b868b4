"""The model catalog (vsrt_service/data/models.toml): which models exist and where they come from."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

CATALOG_FILE = Path(__file__).resolve().parent.parent / "data" / "models.toml"
TYPES = ("whisper", "align")


@dataclass(frozen=True)
class CatalogEntry:
    type: str  # whisper | align
    id: str  # model id, or language code for aligners
    repo: str
    size_mb: float
    description: str
    files: tuple[str, ...]  # glob patterns of what to fetch
    required: tuple[str, ...]  # must exist for a local directory to count without a manifest

    @property
    def key(self) -> str:
        return f"{self.type}:{self.id}"


class Catalog:
    def __init__(self, entries: list[CatalogEntry]) -> None:
        self._entries = {(e.type, e.id): e for e in entries}

    @classmethod
    def load(cls, path: Path = CATALOG_FILE) -> Catalog:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        defaults = data.get("defaults", {})
        entries = []
        for kind in TYPES:
            base = defaults.get(kind, {})
            for model_id, spec in data.get(kind, {}).items():
                entries.append(CatalogEntry(
                    type=kind,
                    id=model_id,
                    repo=spec["repo"],
                    size_mb=float(spec.get("size_mb", 0)),
                    description=spec.get("description", ""),
                    files=tuple(spec.get("files", base.get("files", ()))),
                    required=tuple(spec.get("required", base.get("required", ()))),
                ))
        return cls(entries)

    def get(self, kind: str, model_id: str) -> CatalogEntry | None:
        return self._entries.get((kind, model_id))

    def of_type(self, kind: str) -> list[CatalogEntry]:
        return [e for (t, _), e in self._entries.items() if t == kind]
