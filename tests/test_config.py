"""Configuration: the TOML file states every default; overrides and errors are clear."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from vsrt_service.core.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_config_file_states_exactly_the_embedded_defaults() -> None:
    data = tomllib.loads((ROOT / "vsrt_service" / "data" / "vsrt.toml").read_text())
    defaults = asdict(Settings())
    assert data.pop("data_dir") == str(defaults.pop("data_dir")).replace("data", "./data")
    assert set(data) == set(defaults)
    for section, values in data.items():
        # TOML has no null: settings that default to None are left out (commented) there.
        expected = {
            k: list(v) if isinstance(v, tuple) else v for k, v in defaults[section].items() if v is not None
        }
        assert values == expected, section


def test_layers_apply_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "vsrt.toml"
    cfg.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[runners]\ndevices = ["cuda:0", "cuda:1"]\n')
    env = {
        "VSRT_SERVER_PORT": "9100",
        "VSRT_DATA_DIR": str(tmp_path / "d"),
        "VSRT_TRANSCRIPTION_DEFAULT_LANGUAGE": "null",
    }
    s = load_settings(cfg, env=env, server={"host": "127.0.0.2"})
    assert s.server.port == 9100 and s.server.host == "127.0.0.2"
    assert s.runners.devices == ("cuda:0", "cuda:1")
    assert s.transcription.default_language is None
    assert s.data_dir == (tmp_path / "d").resolve()
    assert s.database_path == (tmp_path / "d" / "vsrt.sqlite3").resolve()


def test_relative_paths_live_under_the_data_dir(tmp_path: Path) -> None:
    s = load_settings(env={}, data_dir=tmp_path, paths={"models": "m"})
    assert s.models_dir == (tmp_path / "m").resolve()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"VSRT_SERVER_PORT": "eighty"}, r"server\.port: expected a number"),
        ({"VSRT_SERVER_PORT": "70000"}, r"server\.port must be"),
        ({"VSRT_RUNNERS_DEVICES": "gpu0"}, "'gpu0' is neither"),
        ({"VSRT_RUNNERS_DEVICES": ""}, "at least one device"),
        ({"VSRT_CUES_MAX_LINES": "0"}, r"cues\.max_lines"),
        ({"VSRT_RUNNERS_HEARTBEAT_TIMEOUT": "1"}, "heartbeat_timeout must be longer"),
        ({"VSRT_STORE_URL": "mysql://db.example.org/vsrt"}, r"store\.url: 'mysql' is not"),
        ({"VSRT_STORE_URL": "postgresql://h:port/db"}, r"store\.url: .*port"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env=env)


def test_bad_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'server\.prot'"):
        load_settings(unknown, env={})


def test_store_url_picks_the_job_store() -> None:
    """Empty (the default): the SQLite file in the data directory; else a server's URL."""
    assert load_settings(env={}).store.url == ""
    url = "postgresql://vsrt:s3cret@db.example.org:5433/vsrt"
    settings = load_settings(env={"VSRT_STORE_URL": url})
    assert settings.store.url == url
    assert "s3cret" not in repr(settings)  # settings get logged; the password must not be
    assert load_settings(env={}, store={"url": "postgres://h/db"}).store.url == "postgres://h/db"
