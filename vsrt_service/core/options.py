"""A job's settings: validated with field-level errors, defaults from the configuration.

The split and transcription settings are *locked* once a job has a checkpoint: changing
them would make the stored results inconsistent, so a resume forces them back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from vsrt_service.core import netguard
from vsrt_service.core.catalog import Catalog
from vsrt_service.core.config import Settings
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.vocab import VadMethod

#: The `priority` option's range: jobs of a higher priority are claimed first, then the oldest.
PRIORITY_MIN, PRIORITY_MAX = -100, 100

#: Settings that shape the cues (not the transcript): the cue rules of a job.
RULE_OPTIONS = (
    "max_line_chars",
    "max_lines",
    "max_cue_seconds",
    "max_chars_per_second",
    "min_silence_for_new_cue",
)
#: Settings that change stored results; a resume keeps the checkpoint's values.
LOCKED = (
    "model",
    "language",
    "task",
    "vad_method",
    "vad_onset",
    "vad_offset",
    "chunk_size",
    "initial_prompt",
    "hotwords",
    "audio_track",
)

#: Whisper reads at most 224 prompt tokens; this many characters is well past that.
MAX_PROMPT_CHARS = 1000
_TRACK_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
#: Speaker counts a job may ask the diarization for (more is not a conversation to caption).
MAX_SPEAKERS = 20
#: The diarization's settings: they shape its stored turns, not the transcript.
SPEAKER_OPTIONS = ("num_speakers", "min_speakers", "max_speakers")

TASKS = ("transcribe", "translate")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


class OptionError(InvalidInput):
    """A bad setting; `field` names it for the API's error body."""

    code = "bad_settings"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class JobOptions:
    model: str
    language: str | None
    task: str
    align: bool
    max_line_chars: int
    max_lines: int
    max_cue_seconds: float
    max_chars_per_second: float
    vad_onset: float
    vad_offset: float
    chunk_size: float
    vad_method: str
    #: Text Whisper reads as if it came before the audio: spelling of names, style.
    initial_prompt: str | None
    #: Words to favour (names, jargon), given to Whisper as hotwords.
    hotwords: str | None
    #: Which audio track: an index among the file's audio tracks, a language code, or None
    #: for the file's default track. A job stores the track it resolved to at submit as
    #: `{"index", "language", "title"}`, which is accepted back as that index.
    audio_track: int | str | dict[str, Any] | None
    min_silence_for_new_cue: float
    #: Where the job's final state is POSTed (None: the configured default, if any).
    webhook_url: str | None = None
    #: Transcripts (TXT) as speaker turns, each starting "[SPEAKER_00] "; the subtitle
    #: formats keep their own conventions (dialogue dashes, VTT voices, JSON fields).
    speaker_labels: bool = False
    #: Who speaks when: a `diarize` phase puts a speaker on every word.
    diarize: bool = False
    #: The diarization's hints: an exact count, or bounds (never both); None lets it decide.
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    #: Claim order in the queue: higher first, then the oldest (0: the default).
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def locked(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in LOCKED}


def defaults(settings: Settings) -> dict[str, Any]:
    t, c = settings.transcription, settings.cues
    return {
        "model": t.default_model,
        "language": t.default_language,
        "task": "transcribe",
        "align": True,
        "max_line_chars": c.max_line_chars,
        "max_lines": c.max_lines,
        "max_cue_seconds": c.max_cue_seconds,
        "max_chars_per_second": c.max_chars_per_second,
        "vad_onset": t.vad_onset,
        "vad_offset": t.vad_offset,
        "chunk_size": t.chunk_size,
        "vad_method": t.vad_method,
        "initial_prompt": None,
        "hotwords": None,
        "audio_track": None,
        "min_silence_for_new_cue": c.min_silence_for_new_cue,
        "webhook_url": None,
        "speaker_labels": False,
        "diarize": False,
        "num_speakers": None,
        "min_speakers": None,
        "max_speakers": None,
        "priority": 0,
    }


def _number(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(name, f"{name} must be a number")
    if integer and not float(value).is_integer():
        raise OptionError(name, f"{name} must be a whole number")
    if not lo <= value <= hi:
        raise OptionError(name, f"{name} must be between {lo:g} and {hi:g}")
    return int(value) if integer else float(value)


def _text(name: str, value: Any) -> str | None:
    """Free text (prompt, hotwords): null or a string; blank means none."""
    if value is None:
        return None
    if isinstance(value, list) and name == "hotwords":
        if not all(isinstance(v, str) for v in value):
            raise OptionError(name, "hotwords must be a string or a list of strings")
        value = ", ".join(v.strip() for v in value if v.strip())
    if not isinstance(value, str):
        raise OptionError(name, f"{name} must be a string or null")
    value = " ".join(value.split())
    if len(value) > MAX_PROMPT_CHARS:
        raise OptionError(name, f"{name} must be at most {MAX_PROMPT_CHARS} characters")
    return value or None


def _track(value: Any) -> int | str | dict[str, Any] | None:
    """An audio track: null, an index (0 is the first audio track), or a language code; or a
    track a job resolved to (`{"index", "language", "title"}`, as job settings show it)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        index, language, title = value.get("index"), value.get("language"), value.get("title")
        if (
            set(value) <= {"index", "language", "title"}
            and isinstance(index, int)
            and not isinstance(index, bool)
            and 0 <= index < 64
            and all(v is None or isinstance(v, str) for v in (language, title))
        ):
            return {"index": index, "language": language, "title": title}
        raise OptionError("audio_track", "audio_track as an object must be {index, language, title}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 64:
            raise OptionError("audio_track", "audio_track must be an index from 0 (the first audio track)")
        return value
    if isinstance(value, str) and _TRACK_LANGUAGE.match(value.strip().lower()):
        return value.strip().lower()
    raise OptionError(
        "audio_track",
        "audio_track must be a track index (0, 1, ...) or a language code such as 'en' or 'deu'",
    )


def parse_options(
    raw: Any, settings: Settings, base: dict[str, Any] | None = None, catalog: Catalog | None = None
) -> JobOptions:
    """Validate user settings over `base` (or the configured defaults); model ids are the
    catalog's (the packaged one unless given), so a model added there is accepted."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionError("settings", "settings must be a JSON object")
    known = {f.name for f in fields(JobOptions)}
    for key in raw:
        if key not in known:
            raise OptionError(key, f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
    merged = {**(base or defaults(settings)), **raw}

    catalog = catalog or Catalog.load()
    model = merged["model"]
    entry = catalog.get("whisper", model) if isinstance(model, str) else None
    if entry is None:
        raise OptionError("model", f"unknown model {model!r}; known: {', '.join(catalog.ids('whisper'))}")
    language = merged["language"]
    if language in ("", "auto"):
        language = None
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language)):
        raise OptionError("language", f"language must be a code such as 'en' or null, not {language!r}")
    if entry.english_only:
        if language not in (None, "en"):
            raise OptionError("language", f"{model} is English-only; use a multilingual model")
        language = "en"
    task = merged["task"]
    if task not in TASKS:
        raise OptionError("task", "task must be 'transcribe' or 'translate'")
    if task == "translate" and entry.english_only:
        raise OptionError("task", f"{model} cannot translate; use a multilingual model")
    align = merged["align"]
    if not isinstance(align, bool):
        raise OptionError("align", "align must be true or false")
    speaker_labels = merged.get("speaker_labels", False)  # absent from older jobs
    if not isinstance(speaker_labels, bool):
        raise OptionError("speaker_labels", "speaker_labels must be true or false")
    diarize = merged.get("diarize", False)
    if not isinstance(diarize, bool):
        raise OptionError("diarize", "diarize must be true or false")
    num, low, high = _speaker_counts(merged)
    return JobOptions(
        model=model,
        language=language,
        task=task,
        align=align,
        max_line_chars=_number("max_line_chars", merged["max_line_chars"], 10, 200, integer=True),
        max_lines=_number("max_lines", merged["max_lines"], 1, 5, integer=True),
        max_cue_seconds=_number("max_cue_seconds", merged["max_cue_seconds"], 1, 60),
        max_chars_per_second=_number("max_chars_per_second", merged["max_chars_per_second"], 1, 100),
        vad_onset=_number("vad_onset", merged["vad_onset"], 0.01, 0.99),
        vad_offset=_number("vad_offset", merged["vad_offset"], 0.01, 0.99),
        chunk_size=_number("chunk_size", merged["chunk_size"], 1, 30),
        vad_method=_choice("vad_method", merged["vad_method"], tuple(VadMethod)),
        initial_prompt=_text("initial_prompt", merged["initial_prompt"]),
        hotwords=_text("hotwords", merged["hotwords"]),
        audio_track=_track(merged["audio_track"]),
        min_silence_for_new_cue=_number(
            "min_silence_for_new_cue", merged["min_silence_for_new_cue"], 0.1, 30
        ),
        webhook_url=_webhook(merged.get("webhook_url"), settings),
        speaker_labels=speaker_labels,
        diarize=diarize,
        num_speakers=num,
        min_speakers=low,
        max_speakers=high,
        priority=_number("priority", merged.get("priority", 0), PRIORITY_MIN, PRIORITY_MAX, integer=True),
    )


def _speaker_counts(merged: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """num_speakers, min_speakers, max_speakers: whole numbers 1..MAX_SPEAKERS or null; an
    exact count excludes bounds (the model would ignore them), and min <= max."""
    num, low, high = (
        None if merged.get(k) is None else _number(k, merged[k], 1, MAX_SPEAKERS, integer=True)
        for k in SPEAKER_OPTIONS
    )
    if num is not None and (low is not None or high is not None):
        raise OptionError("num_speakers", "give num_speakers or min_speakers/max_speakers, not both")
    if low is not None and high is not None and low > high:
        raise OptionError("min_speakers", "min_speakers must not be above max_speakers")
    return num, low, high


def _webhook(value: Any, settings: Settings) -> str | None:
    """An http(s) URL without credentials; a literal private address or localhost is refused
    here already (a name is checked again, resolved, at every delivery)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise OptionError("webhook_url", "webhook_url must be a URL string or null")
    allow = netguard.parse_allowance(settings.webhooks.allow_private)
    refusal = netguard.literal_refusal(value.strip(), allow)
    if refusal is not None:
        raise OptionError("webhook_url", f"webhook_url refused: {refusal}")
    return value.strip()


def track_choice(value: int | str | dict[str, Any] | None) -> int | str | None:
    """What to look a track up by: a resolved track by its index."""
    return value["index"] if isinstance(value, dict) else value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise OptionError(name, f"{name} must be one of: {', '.join(allowed)}")
    return str(value)


def conflicts(checkpoint: dict[str, Any] | None, options: JobOptions) -> list[dict[str, Any]]:
    """Each locked setting whose new value differs from the checkpoint's."""
    if not checkpoint:
        return []
    return [
        {"field": k, "checkpoint": checkpoint.get(k), "requested": getattr(options, k)}
        for k in LOCKED
        if k in checkpoint and checkpoint[k] != getattr(options, k)
    ]
