"""The runner wire protocol: JSON lines between the service and `python -m gpu_runner`.

Pure Python, standard library only: the service (which must never import torch) and the
runner both import this module, so each message has exactly one definition.

Framing: one JSON object per line, UTF-8, on the runner's stdin (requests) and stdout
(replies). Every request carries an `id`; every reply to it carries the same `id`. A
request ends with exactly one `result` or `error`; before that it may emit any number of
`progress`, `fragment` and `log` messages. stderr is the runner's free-form log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Generic, Literal, NotRequired, Required, TypeAlias, TypedDict, TypeVar

from vsrt_service.core import bigjson
from vsrt_service.core.integrity import ManifestFile

PROTOCOL_VERSION = 1

#: Longest line either side accepts; a longer one is a protocol error, not a crash.
MAX_LINE_BYTES = 16 * 1024 * 1024

#: Lines longer than this (an aligned transcript) are decoded item by item, and the service
#: does it in a thread: one `json.loads` of megabytes would hold its event loop.
BIG_LINE_BYTES = 256 * 1024


class ProtocolError(ValueError):
    """A line that is not a valid message; the reader logs it and carries on."""


# --- shared payload shapes -------------------------------------------------------------


class SegmentSpan(TypedDict):
    """A stretch of the job's audio, global times in seconds."""

    index: int
    start: float
    end: float


class TextSegment(TypedDict):
    index: int
    start: float
    end: float
    text: str


class Word(TypedDict, total=False):
    """A word; `start`/`end` are missing where the aligner could not place it (digits...);
    `speaker` is there once the job's speakers are known (core/speakers.py)."""

    word: Required[str]
    start: float
    end: float
    score: float | None
    #: Who says it (whisperx's assign_word_speakers, "SPEAKER_00"); missing when unknown.
    speaker: str


class AlignedSegment(TypedDict):
    start: float
    end: float
    text: str
    words: list[Word]
    #: The segment's main speaker after diarization; its words may differ or lack one.
    speaker: NotRequired[str]


#: The kinds of model a runner loads (each with its own loader in gpu_runner/engine.py).
ModelKind: TypeAlias = Literal["whisper", "align", "diarize"]


class ModelRef(TypedDict):
    """What the runner needs to load a model: a local directory, never a hub id."""

    kind: ModelKind
    key: str  # cache key, e.g. "whisper:tiny.en", "align:en" or "diarize:community-1"
    path: str  # absolute local directory


class LoadedModel(TypedDict):
    """One entry of a runner's model cache (`path` is a server path: never pass it on to a client)."""

    key: str
    kind: str
    path: str


class MemoryInfo(TypedDict):
    rss_bytes: int | None
    gpu_allocated_bytes: int | None


# --- results: the `data` of each request's `result` reply -------------------------------


class HelloResult(TypedDict):
    protocol_version: int
    compatible: bool
    pid: int
    device: str
    compute_type: str
    versions: dict[str, str | None]
    loaded_models: list[LoadedModel]
    load_count: int
    memory: MemoryInfo
    warm: bool


class PingResult(TypedDict):
    ts: float
    busy: bool
    warm: bool  # warm-up has finished


class LoadModelResult(TypedDict):
    loaded_now: bool  # False: it was already in the cache
    seconds: float
    load_count: int


class UnloadResult(TypedDict):
    unloaded: list[str]  # cache keys
    loaded_models: list[LoadedModel]


class SpeechSpan(TypedDict):
    """A stretch of speech the split found, seconds from the start of the audio."""

    start: float
    end: float


class SplitResult(TypedDict):
    segments: list[SpeechSpan]  # chunks to transcribe, in order; the service numbers them
    #: The speech regions inside the chunks at full resolution (before merging), in order:
    #: where the speech really is, for word and cue timing and live lines.
    speech: list[SpeechSpan]


class TranscribeResult(TypedDict):
    """The segments themselves came as `fragment` replies; this closes the request."""

    language: str
    count: int
    load_count: int


class LanguageCandidate(TypedDict):
    language: str  # an ISO 639-1 code, as Whisper names languages
    probability: float


class DetectLanguageResult(TypedDict):
    """The best guess and the top candidates, best first (English-only models: "en", 1.0)."""

    language: str
    probability: float
    candidates: list[LanguageCandidate]
    speech_seconds: float  # how much speech the guess heard (silence is skipped)


class AlignResult(TypedDict):
    alignment: Literal["wav2vec2", "whisper"]
    segments: list[AlignedSegment]


class SpeakerSegment(TypedDict):
    """One speaker's turn, global times in seconds; labels are the model's (SPEAKER_00...)."""

    start: float
    end: float
    speaker: str


class DiarizeResult(TypedDict):
    segments: list[SpeakerSegment]  # by start; turns of different speakers may overlap
    speakers: list[str]  # each label once, in order of first appearance


class DownloadResult(TypedDict):
    endpoint: str  # the one that served the files
    commit: str | None  # None where the hub did not say
    files: list[ManifestFile]
    fetched: list[str]  # names fetched now (the others were already there and intact)
    total_bytes: int


class CancelResult(TypedDict):
    canceled: bool  # False: the target had already ended


class ShutdownResult(TypedDict):
    bye: bool


#: The result data a request kind answers with; `Request[SplitResult]` and so on.
R = TypeVar("R", bound=Mapping[str, Any])
#: (`type` is also a field name in the message classes, hence the alias.)
ResultType: TypeAlias = type[Mapping[str, Any]]


# --- requests (service -> runner) --------------------------------------------------------


@dataclass
class Request(Generic[R]):
    """Generic in its result data, so `await slot.call(Split(...))` is typed SplitResult."""

    type: ClassVar[str] = ""
    Result: ClassVar[ResultType]  # the TypedDict of its result data
    id: str


@dataclass
class Hello(Request[HelloResult]):
    """Handshake: the service states its protocol version, the runner its capabilities."""

    type: ClassVar[str] = "hello"
    Result: ClassVar[ResultType] = HelloResult
    protocol_version: int = PROTOCOL_VERSION


@dataclass
class Ping(Request[PingResult]):
    type: ClassVar[str] = "ping"
    Result: ClassVar[ResultType] = PingResult


@dataclass
class LoadModel(Request[LoadModelResult]):
    type: ClassVar[str] = "load_model"
    Result: ClassVar[ResultType] = LoadModelResult
    model: ModelRef = field(default_factory=lambda: ModelRef(kind="whisper", key="", path=""))
    language: str | None = None


@dataclass
class Unload(Request[UnloadResult]):
    """Drop one model (by cache key) or, with key None, every loaded model."""

    type: ClassVar[str] = "unload"
    Result: ClassVar[ResultType] = UnloadResult
    key: str | None = None


@dataclass
class Split(Request[SplitResult]):
    """Voice-activity split of a 16 kHz mono WAV into segments of at most chunk_size s."""

    type: ClassVar[str] = "split"
    Result: ClassVar[ResultType] = SplitResult
    audio_path: str = ""
    vad: str = "pyannote"  # a VAD backend the runner has by this name (gpu_runner/vad.py)
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    chunk_size: float = 30.0


@dataclass
class Transcribe(Request[TranscribeResult]):
    """Transcribe segments without alignment; one `fragment` per segment as it finishes."""

    type: ClassVar[str] = "transcribe"
    Result: ClassVar[ResultType] = TranscribeResult
    audio_path: str = ""
    model: ModelRef = field(default_factory=lambda: ModelRef(kind="whisper", key="", path=""))
    segments: list[SegmentSpan] = field(default_factory=list)
    language: str | None = None
    task: str = "transcribe"
    batch_size: int = 8
    beam_size: int = 5
    initial_prompt: str | None = None  # text Whisper reads as if it preceded the audio
    hotwords: str | None = None  # names and jargon to favour


@dataclass
class DetectLanguage(Request[DetectLanguageResult]):
    """Which language a 16 kHz mono WAV speaks, from its first `seconds` of speech."""

    type: ClassVar[str] = "detect_language"
    Result: ClassVar[ResultType] = DetectLanguageResult
    audio_path: str = ""
    model: ModelRef = field(default_factory=lambda: ModelRef(kind="whisper", key="", path=""))
    seconds: float = 30.0
    top: int = 5


@dataclass
class Align(Request[AlignResult]):
    """Word timings for stored texts: wav2vec2 when `align_model` is given, else Whisper's."""

    type: ClassVar[str] = "align"
    Result: ClassVar[ResultType] = AlignResult
    audio_path: str = ""
    language: str = "en"
    segments: list[TextSegment] = field(default_factory=list)
    align_model: ModelRef | None = None
    whisper_model: ModelRef | None = None


@dataclass
class Diarize(Request[DiarizeResult]):
    """Who speaks when in a 16 kHz mono WAV. The speaker counts are hints the model honours
    (None: it decides); `progress` replies give percent done. Words get their speakers in
    the service (core/speakers.py), from these turns."""

    type: ClassVar[str] = "diarize"
    Result: ClassVar[ResultType] = DiarizeResult
    audio_path: str = ""
    model: ModelRef = field(default_factory=lambda: ModelRef(kind="diarize", key="", path=""))
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass
class Download(Request[DownloadResult]):
    """Fetch a hub repository's files into `target_dir`, trying `endpoints` in order.

    Files already present and matching the hub's manifest are not fetched again; every
    fetched file is checked against the hub's sha256 (or git blob hash). `prefer` lists
    alternatives of which only the first the hub has is fetched (safetensors over bin).
    `token` is the hub token for gated repositories; it is never printed (repr=False) and
    the runner never writes it anywhere.
    """

    type: ClassVar[str] = "download"
    Result: ClassVar[ResultType] = DownloadResult
    repo: str = ""
    revision: str = "main"
    endpoints: list[str] = field(default_factory=list)
    target_dir: str = ""
    patterns: list[str] = field(default_factory=list)
    prefer: list[str] = field(default_factory=list)
    token: str | None = field(default=None, repr=False)


@dataclass
class Cancel(Request[CancelResult]):
    """Ask the runner to stop request `target` at the next segment boundary."""

    type: ClassVar[str] = "cancel"
    Result: ClassVar[ResultType] = CancelResult
    target: str = ""


@dataclass
class Shutdown(Request[ShutdownResult]):
    type: ClassVar[str] = "shutdown"
    Result: ClassVar[ResultType] = ShutdownResult


# --- replies (runner -> service) ---------------------------------------------------------


@dataclass
class Reply:
    type: ClassVar[str] = ""
    id: str


@dataclass
class Progress(Reply):
    type: ClassVar[str] = "progress"
    done: float = 0
    total: float = 0
    message: str = ""


@dataclass
class Fragment(Reply):
    """One transcribed segment, sent the moment it is done so the service can checkpoint."""

    type: ClassVar[str] = "fragment"
    index: int = 0
    start: float = 0.0
    end: float = 0.0
    text: str = ""
    language: str = ""


@dataclass
class Result(Reply):
    type: ClassVar[str] = "result"
    data: Mapping[str, Any] = field(default_factory=dict)  # the request's `Result` TypedDict


@dataclass
class Error(Reply):
    """Ends a request. `code` is machine-readable: canceled, bad_request, model, audio, internal."""

    type: ClassVar[str] = "error"
    code: str = "internal"
    message: str = ""


Message: TypeAlias = Request[Any] | Reply

REQUEST_TYPES: dict[str, type[Request[Any]]] = {
    cls.type: cls
    for cls in (
        Hello,
        Ping,
        LoadModel,
        Unload,
        Split,
        Transcribe,
        DetectLanguage,
        Align,
        Diarize,
        Download,
        Cancel,
        Shutdown,
    )
}
REPLY_TYPES: dict[str, type[Reply]] = {cls.type: cls for cls in (Progress, Fragment, Result, Error)}


def encode(msg: Message) -> bytes:
    """One message as one line (compact JSON, no embedded newlines)."""
    payload = {"type": msg.type, **asdict(msg)}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _decode(line: bytes | str, table: dict[str, type[Any]]) -> Any:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes is over the limit")
    try:
        # result -> data -> segments -> one segment at a time
        obj = bigjson.loads(line, depth=3) if len(line) > BIG_LINE_BYTES else json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = obj.pop("type", None)
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    if not isinstance(obj.get("id"), str):
        raise ProtocolError(f"{kind} message without a string id")
    known = {f.name for f in fields(cls)}
    unknown = set(obj) - known
    if unknown:
        raise ProtocolError(f"{kind} message with unknown fields {sorted(unknown)}")
    try:
        return cls(**obj)
    except TypeError as exc:
        raise ProtocolError(f"bad {kind} message: {exc}") from None


def decode_request(line: bytes | str) -> Request[Any]:
    msg: Request[Any] = _decode(line, REQUEST_TYPES)
    return msg


def decode_reply(line: bytes | str) -> Reply:
    msg: Reply = _decode(line, REPLY_TYPES)
    return msg
