"""Model file integrity against the hub's manifest: present, non-empty, right size and hash.

Pure standard library, used by the runner after a download and by the service at start-up
(in a thread). huggingface_hub checks only sizes, so a corrupt file of the right length
would otherwise be accepted: LFS files carry a sha256, small ones a git blob sha1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypedDict

CHUNK = 4 << 20


class ManifestFile(TypedDict):
    name: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1, for files the hub keeps in git


def file_problem(path: Path, expected: ManifestFile, *, hashes: bool = True) -> str | None:
    """Why a file does not match the manifest, or None when it does."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty"
    if expected["size"] and size != expected["size"]:
        return f"size {size} instead of {expected['size']}"
    if not hashes:
        return None
    if expected.get("sha256"):
        if _digest(path, hashlib.sha256()) != expected["sha256"]:
            return "sha256 does not match the hub's"
    elif expected.get("blob_id"):
        blob = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        if _digest(path, blob) != expected["blob_id"]:
            return "git blob hash does not match the hub's"
    return None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (blocking; run it in a thread)."""
    return _digest(path, hashlib.sha256())


def _digest(path: Path, digest: Any) -> str:
    """Hex digest of a file read in chunks (model weights are gigabytes)."""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def problems(directory: Path, manifest: list[ManifestFile], *, hashes: bool = True) -> dict[str, str]:
    """Every file of the manifest that is not as the hub described it, with the reason."""
    found = {}
    for item in manifest:
        problem = file_problem(directory / item["name"], item, hashes=hashes)
        if problem:
            found[item["name"]] = problem
    return found
