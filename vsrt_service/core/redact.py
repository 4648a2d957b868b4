"""Server paths cut out of text meant for clients (API answers, job errors, health).

A pure text function, so every layer that writes such a message (the scheduler's and the
pipeline's job errors, the web layer's answers) uses it without importing the web layer.
"""

from __future__ import annotations

import re
from pathlib import Path

_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"`:,;()<>\[\]]+/)+([^\s/'\"`:,;()<>\[\]]*)")


def public_text(text: str, data_dir: Path) -> str:
    """A message fit for clients: files under the data directory by their relative name
    (`jobs/<id>/audio.wav`), any other absolute path cut to its last part."""
    root = str(data_dir).rstrip("/")
    if root:
        text = text.replace(f"{root}/", "")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)
