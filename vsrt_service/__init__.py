"""vsrt: subtitles from video and audio, as an aiohttp service and an asyncio library.

This package never imports torch, whisperx, ctranslate2 or transformers: model work runs
in `python -m gpu_runner` subprocesses.
"""

from vsrt_service.core.config import Settings, load_settings
from vsrt_service.service import Service

__all__ = ["Service", "Settings", "load_settings"]
