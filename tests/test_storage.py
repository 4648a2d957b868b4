"""The storage root: uploads and job folders under a directory every node sees, the per-host
files (database, models, lock) in the data directory, and housekeeping that leaves another
node's fresh files alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsrt_service.cli import _settings, build_parser
from vsrt_service.core.config import ConfigError, load_settings

# --- settings --------------------------------------------------------------------------------


def test_storage_root_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    data, shared = tmp_path / "data", tmp_path / "shared"
    plain = load_settings(env={}, data_dir=data)
    assert plain.storage.root == "" and plain.storage_root == data.resolve()
    assert plain.uploads_dir == data.resolve() / "uploads" and plain.jobs_dir == data.resolve() / "jobs"

    s = load_settings(env={"VSRT_STORAGE_ROOT": str(shared)}, data_dir=data)
    assert s.storage_root == shared.resolve()
    assert s.uploads_dir == shared.resolve() / "uploads" and s.jobs_dir == shared.resolve() / "jobs"
    # What is per host stays in the data directory.
    assert s.database_path.parent == data.resolve() and s.models_dir.parent == data.resolve()

    assert load_settings(env={}, data_dir=data, storage={"root": "media"}).storage_root == data / "media"
    cfg = tmp_path / "vsrt.toml"
    cfg.write_text(f'[storage]\nroot = "{shared}"\n')
    assert load_settings(cfg, env={}, data_dir=data).storage_root == shared.resolve()

    args = build_parser().parse_args(["serve", "--data-dir", str(data), "--storage-root", str(shared)])
    assert _settings(args).storage_root == shared.resolve()


def test_a_storage_root_inside_the_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.root"):
        load_settings(env={}, data_dir=tmp_path, storage={"root": "models/shared"})
