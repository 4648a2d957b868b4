"""One typed, validated settings object, read from defaults, a TOML file and VSRT_* variables.

The dataclass defaults are the embedded defaults (so an installed package runs with no
file at all); `vsrt_service/data/vsrt.toml` spells out the same values and a test keeps them equal.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from vsrt_service.core import netguard
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.vocab import VadMethod


class ConfigError(InvalidInput):
    """A setting with a bad value; the message names the setting and what is expected."""

    code = "bad_config"


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: int = 2048
    media_roots: tuple[str, ...] = ()
    auth_token: str | None = None
    ticket_seconds: float = 60.0
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    #: The address clients reach this server at (https://vsrt.example.org); makes links absolute.
    public_url: str | None = None


@dataclass(frozen=True)
class PathSettings:
    database: str = "vsrt.sqlite3"
    uploads: str = "uploads"
    jobs: str = "jobs"
    models: str = "models"


@dataclass(frozen=True)
class StoreSettings:
    """The `[store]` section: where jobs live. Empty: the SQLite file in the data directory
    (one host); `postgresql://user:password@host:port/database`: a server every node shares.
    Never printed (repr=False): the URL may hold the password."""

    url: str = field(default="", repr=False)


@dataclass(frozen=True)
class StorageSettings:
    """The `[storage]` section: where uploads and job folders (audio, outputs) live. Empty:
    the data directory (one host); else a directory every node sees at the same path."""

    root: str = ""


#: URL schemes of `store.url` that name a PostgreSQL server.
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class RunnerSettings:
    enabled: bool = True
    devices: tuple[str, ...] = ("cpu",)
    compute_type: str = "auto"
    cpu_threads: int = 0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    start_timeout: float = 120.0
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0
    model_cache_size: int = 3
    nice: int = 5


@dataclass(frozen=True)
class JobPolicy:
    """The `[jobs]` section: how long a job holds its lease, how often it may be retried or
    crash a runner, how long it waits, and how long its extracted audio is kept."""

    lease_seconds: float = 30.0
    max_attempts: int = 5
    max_segment_crashes: int = 3
    align_wait_seconds: float = 300.0
    keep_audio_hours: float = 0.0
    keep_resumable_audio_hours: float = 168.0
    #: How often an idle scheduler looks at the queue unprompted (at most a third of the lease):
    #: a job queued in this process, or on PostgreSQL by any node, wakes it at once anyway.
    poll_seconds: float = 1.0


@dataclass(frozen=True)
class MediaSettings:
    probe_timeout: float = 30.0
    extract_timeout: float = 120.0
    extract_timeout_factor: float = 0.5


@dataclass(frozen=True)
class TranscriptionSettings:
    default_model: str = "tiny.en"
    default_language: str | None = "en"
    batch_size: int = 8
    beam_size: int = 5
    vad_method: str = "silero"  # from CPU measurements (bench.pipeline); GPU not measured yet
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    chunk_size: float = 30.0


@dataclass(frozen=True)
class CueSettings:
    max_line_chars: int = 42
    max_lines: int = 2
    min_cue_seconds: float = 0.83
    max_cue_seconds: float = 7.0
    min_gap_seconds: float = 0.083
    max_chars_per_second: float = 20.0
    #: How long a cue stays up after its last word's speech ends (more only where the
    #: minimum duration or reading speed needs it, never into the next speech).
    linger_seconds: float = 0.3
    #: A silence at least this long between two words always starts a new cue.
    min_silence_for_new_cue: float = 1.5
    #: Two short turns of two speakers may share one two-line cue (else each gets its own).
    dialogue_cues: bool = True
    #: What starts each line of such a dialogue cue, its space included (Netflix: "- ").
    dialogue_dash: str = "- "


@dataclass(frozen=True)
class SseSettings:
    heartbeat_interval: float = 10.0
    reconnect_seconds: float = 2.0
    replay_buffer: int = 512
    subscriber_queue: int = 256
    max_connections_per_job: int = 20
    max_connections_per_client: int = 50
    max_connections_models: int = 200
    idle_channel_seconds: float = 600.0
    #: On PostgreSQL, how long job events stay in the events table for replay after a reconnect.
    event_retention_hours: float = 24.0


@dataclass(frozen=True)
class ModelSettings:
    max_concurrent_downloads: int = 1
    mirrors: tuple[str, ...] = ()
    preload_on_start: bool = True
    #: The Hugging Face token for gated models (else env HF_TOKEN); never printed (repr=False).
    hf_token: str = field(default="", repr=False)
    #: The diarization model (a `diarize` id of the catalog) jobs use for speakers.
    default_diarize: str = "community-1"
    #: Whether this node may download models; false: it runs (and claims) only what it has.
    allow_downloads: bool = True


@dataclass(frozen=True)
class WebhookSettings:
    """The `[webhooks]` section: where a job's final state is posted, signed and retried."""

    default_url: str | None = None
    #: HMAC key; unset: one is generated into the data directory (`webhook-secret`) and kept.
    secret: str | None = None
    retry_for_seconds: float = 86400.0
    timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 10.0
    backoff_max_seconds: float = 1800.0
    allow_private: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./data")
    server: ServerSettings = field(default_factory=ServerSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    runners: RunnerSettings = field(default_factory=RunnerSettings)
    jobs: JobPolicy = field(default_factory=JobPolicy)
    media: MediaSettings = field(default_factory=MediaSettings)
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings)
    cues: CueSettings = field(default_factory=CueSettings)
    sse: SseSettings = field(default_factory=SseSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    def path(self, name: str) -> Path:
        """An absolute path for one of the [paths] entries, under the data directory."""
        return (self.data_dir / getattr(self.paths, name)).resolve()

    @property
    def storage_root(self) -> Path:
        """Where uploads and job folders live: `storage.root` (relative to the data directory
        if not absolute), or the data directory itself when it is empty."""
        if not self.storage.root:
            return self.data_dir
        return (self.data_dir / Path(self.storage.root).expanduser()).resolve()

    @property
    def database_path(self) -> Path:
        return self.path("database")

    @property
    def jobs_dir(self) -> Path:
        return (self.storage_root / self.paths.jobs).resolve()

    @property
    def uploads_dir(self) -> Path:
        return (self.storage_root / self.paths.uploads).resolve()

    @property
    def models_dir(self) -> Path:
        return self.path("models")

    def media_root_paths(self) -> list[Path]:
        return [(self.data_dir / root).resolve() for root in self.server.media_roots]


def parse_flag(text: str) -> bool | None:
    """A yes/no word as environment variables and form fields spell it; None if it is not one."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Turn a TOML or environment value into the field's type, or say what is wrong."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, name)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], name) for v in value)
    if hint is bool:
        flag = value if isinstance(value, bool) else parse_flag(value) if isinstance(value, str) else None
        if flag is None:
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return flag
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if hint is Path:
        return Path(str(value))
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")  # pragma: no cover


def _merge(obj: Any, values: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown setting {name!r}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a table")
            changes[key] = _merge(current, value, f"{name}.")
        else:
            changes[key] = _coerce(value, hints[key], name)
    return replace(obj, **changes)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """VSRT_DATA_DIR and VSRT_<SECTION>_<KEY> as a nested mapping like a TOML file's."""
    out: dict[str, Any] = {}
    if env.get("VSRT_DATA_DIR"):
        out["data_dir"] = env["VSRT_DATA_DIR"]
    for section in fields(Settings):
        if section.name == "data_dir":
            continue
        for f in fields(getattr(Settings(), section.name)):
            var = f"VSRT_{section.name}_{f.name}".upper()
            if var in env:
                out.setdefault(section.name, {})[f.name] = env[var]
    return out


def _validate(s: Settings) -> None:
    checks: list[tuple[bool, str]] = [
        (1 <= s.server.port <= 65535 or s.server.port == 0, "server.port must be 0..65535"),
        (s.server.max_upload_mb > 0, "server.max_upload_mb must be positive"),
        (
            s.server.auth_token is None or len(s.server.auth_token) >= 16,
            "server.auth_token must be at least 16 characters",
        ),
        (s.server.ticket_seconds > 0, "server.ticket_seconds must be positive"),
        (len(s.runners.devices) > 0, "runners.devices must name at least one device"),
        (
            s.runners.compute_type in ("auto", "int8", "int8_float16", "float16", "float32"),
            "runners.compute_type must be auto, int8, int8_float16, float16 or float32",
        ),
        (s.runners.heartbeat_interval > 0, "runners.heartbeat_interval must be positive"),
        (
            s.runners.heartbeat_timeout > s.runners.heartbeat_interval,
            "runners.heartbeat_timeout must be longer than runners.heartbeat_interval",
        ),
        (s.runners.model_cache_size >= 1, "runners.model_cache_size must be at least 1"),
        (0 <= s.runners.nice <= 19, "runners.nice must be 0..19"),
        (s.jobs.max_attempts >= 1, "jobs.max_attempts must be at least 1"),
        (s.jobs.max_segment_crashes >= 1, "jobs.max_segment_crashes must be at least 1"),
        (s.jobs.lease_seconds >= 1, "jobs.lease_seconds must be at least 1"),
        (0.05 <= s.jobs.poll_seconds <= 3600, "jobs.poll_seconds must be 0.05..3600"),
        (0 <= s.jobs.keep_audio_hours < math.inf, "jobs.keep_audio_hours must be 0 or more hours"),
        (
            0 <= s.jobs.keep_resumable_audio_hours < math.inf,
            "jobs.keep_resumable_audio_hours must be 0 or more hours",
        ),
        (s.media.probe_timeout > 0, "media.probe_timeout must be positive"),
        (s.media.extract_timeout > 0, "media.extract_timeout must be positive"),
        (s.media.extract_timeout_factor >= 0, "media.extract_timeout_factor must not be negative"),
        (s.transcription.batch_size >= 1, "transcription.batch_size must be at least 1"),
        (0 < s.transcription.chunk_size <= 30, "transcription.chunk_size must be in (0, 30]"),
        (s.cues.max_line_chars >= 10, "cues.max_line_chars must be at least 10"),
        (s.cues.max_lines >= 1, "cues.max_lines must be at least 1"),
        (
            0 < s.cues.min_cue_seconds < s.cues.max_cue_seconds,
            "cues.min_cue_seconds must be positive and below cues.max_cue_seconds",
        ),
        (s.cues.max_chars_per_second > 0, "cues.max_chars_per_second must be positive"),
        (0 <= s.cues.linger_seconds <= 5, "cues.linger_seconds must be 0..5"),
        (
            0.1 <= s.cues.min_silence_for_new_cue <= 30,
            "cues.min_silence_for_new_cue must be 0.1..30 seconds",
        ),
        (
            1 <= len(s.cues.dialogue_dash) <= 3
            and not s.cues.dialogue_dash[0].isspace()
            and all(c.isprintable() for c in s.cues.dialogue_dash),
            "cues.dialogue_dash must be 1 to 3 printable characters, not starting with a space",
        ),
        (
            s.transcription.vad_method in tuple(VadMethod),
            f"transcription.vad_method must be one of: {', '.join(VadMethod)}",
        ),
        (s.sse.heartbeat_interval > 0, "sse.heartbeat_interval must be positive"),
        (s.sse.idle_channel_seconds > 0, "sse.idle_channel_seconds must be positive"),
        (s.sse.event_retention_hours > 0, "sse.event_retention_hours must be positive"),
        (s.sse.reconnect_seconds > 0, "sse.reconnect_seconds must be positive"),
        (
            min(s.sse.max_connections_per_job, s.sse.max_connections_per_client, s.sse.max_connections_models)
            >= 1,
            "sse.max_connections_* must be at least 1",
        ),
        (s.models.max_concurrent_downloads >= 1, "models.max_concurrent_downloads must be >= 1"),
        (
            not any(c.isspace() for c in s.models.hf_token),
            "models.hf_token (or HF_TOKEN) must be one word, as the hub gives it",
        ),
        (bool(s.models.default_diarize.strip()), "models.default_diarize must name a diarize model"),
        (
            s.webhooks.secret is None or len(s.webhooks.secret) >= 16,
            "webhooks.secret must be at least 16 characters",
        ),
        (s.webhooks.retry_for_seconds > 0, "webhooks.retry_for_seconds must be positive"),
        (s.webhooks.timeout_seconds > 0, "webhooks.timeout_seconds must be positive"),
        (
            0 < s.webhooks.backoff_initial_seconds <= s.webhooks.backoff_max_seconds,
            "webhooks.backoff_initial_seconds must be positive and at most webhooks.backoff_max_seconds",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for entry in s.server.trusted_proxies:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    urls = (("server.public_url", s.server.public_url), ("webhooks.default_url", s.webhooks.default_url))
    for name, url in urls:
        if url is not None:
            try:
                netguard.parse_target(url)
            except netguard.TargetRefused as exc:
                raise ConfigError(f"{name}: {exc}") from None
    try:
        netguard.parse_allowance(s.webhooks.allow_private)
    except ValueError as exc:
        raise ConfigError(f"webhooks.allow_private: {exc}") from None
    _check_store_url(s.store.url)
    if s.storage.root and (s.storage_root == s.models_dir or s.storage_root.is_relative_to(s.models_dir)):
        raise ConfigError("storage.root must not be the models directory or inside it: models are per host")
    for device in s.runners.devices:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError(f"runners.devices: {device!r} is neither 'cpu' nor 'cuda:N'")


def _check_store_url(url: str) -> None:
    """Empty, or a PostgreSQL URL that parses (whether the server answers is known at start)."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"store.url: {parts.scheme or url!r} is not a job store vsrt knows: leave it empty for the"
            " SQLite file in the data directory, or give postgresql://user:password@host:port/database"
        )
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ConfigError("store.url: the port must be a number") from None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the file, then the environment, then keyword overrides (CLI flags)."""
    settings = Settings()
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        settings = _merge(settings, data, "")
    settings = _merge(settings, _env_overrides(os.environ if env is None else env), "")
    settings = _merge(settings, {k: v for k, v in overrides.items() if v is not None}, "")
    settings = replace(settings, data_dir=settings.data_dir.expanduser().resolve())
    hf_token = (os.environ if env is None else env).get("HF_TOKEN", "")
    if not settings.models.hf_token and hf_token:  # the hub's own variable, when no setting says
        settings = replace(settings, models=replace(settings.models, hf_token=hf_token))
    _validate(settings)
    return settings
