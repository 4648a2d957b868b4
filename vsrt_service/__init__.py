"""vsrt: subtitles from video and audio, as an aiohttp service and an asyncio library.

This package never imports torch, whisperx, ctranslate2 or transformers: model work runs
in `python -m gpu_runner` subprocesses. Its exports load on first use, so the runner, which
imports only `vsrt_service.core`, never loads the service's layers or their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vsrt_service.core.config import Settings, load_settings
    from vsrt_service.service import Service
    from vsrt_service.web.app import create_app

__all__ = ["Service", "Settings", "create_app", "load_settings"]

#: Each export and the module that defines it.
_EXPORTS = {
    "Service": "vsrt_service.service",
    "Settings": "vsrt_service.core.config",
    "load_settings": "vsrt_service.core.config",
    "create_app": "vsrt_service.web.app",
}


def __getattr__(name: str) -> Any:
    """Import an export's module when the export is first asked for (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
