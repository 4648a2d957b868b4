"""The model catalog (vsrt_service/data/models.toml): which models exist and where they come from.

It is the registry of model types too: each top-level table (other than `defaults`) is a
type, in file order, so a new type needs a table here and the code that handles it, nothing
else. A catalog file is read once per path (it is data shipped with the package).
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).resolve().parent.parent / "data" / "models.toml"


class CatalogError(ValueError):
    """A catalog file that cannot be used; names the table at fault."""


@dataclass(frozen=True)
class CatalogEntry:
    type: str  # a catalog type: whisper, align, diarize, ...
    id: str  # model id, or language code for aligners
    repo: str
    size_mb: float
    description: str
    files: tuple[str, ...]  # glob patterns of what to fetch
    required: tuple[str, ...]  # must exist for a local directory to count without a manifest
    english_only: bool = False  # transcribes English only, cannot translate
    gated: bool = False  # the hub serves it only with a token whose licence is accepted

    @property
    def key(self) -> str:
        return f"{self.type}:{self.id}"


class Catalog:
    def __init__(self, entries: list[CatalogEntry], types: tuple[str, ...] | None = None) -> None:
        self._entries = {(e.type, e.id): e for e in entries}
        #: Model types in catalog order.
        self.types: tuple[str, ...] = types or tuple(dict.fromkeys(e.type for e in entries))

    @classmethod
    def load(cls, path: Path = CATALOG_FILE) -> Catalog:
        """The catalog in `path`, read once (entries are immutable, so it is shared)."""
        return _load(Path(path).resolve())

    def get(self, kind: str, model_id: str) -> CatalogEntry | None:
        return self._entries.get((kind, model_id))

    def of_type(self, kind: str) -> list[CatalogEntry]:
        return [e for (t, _), e in self._entries.items() if t == kind]

    def ids(self, kind: str) -> list[str]:
        return [e.id for e in self.of_type(kind)]


@functools.cache
def _load(path: Path) -> Catalog:
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    defaults: dict[str, Any] = data.get("defaults", {})
    types = tuple(k for k in data if k != "defaults")
    entries = []
    for kind in types:
        table = data[kind]
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise CatalogError(f"{path.name}: [{kind}] must hold one table per model")
        base = defaults.get(kind, {})
        for model_id, spec in table.items():
            if "repo" not in spec:
                raise CatalogError(f"{path.name}: [{kind}.{model_id!r}] has no repo")
            entries.append(
                CatalogEntry(
                    type=kind,
                    id=model_id,
                    repo=spec["repo"],
                    size_mb=float(spec.get("size_mb", 0)),
                    description=spec.get("description", ""),
                    files=tuple(spec.get("files", base.get("files", ()))),
                    required=tuple(spec.get("required", base.get("required", ()))),
                    english_only=bool(spec.get("english_only", False)),
                    gated=bool(spec.get("gated", False)),
                )
            )
    return Catalog(entries, types)
