"""The service's words: job phases (with their shares of progress), signal codes, model states.

One definition each, so the pipeline, the scheduler, the model manager and the UI (through
`GET /api/meta`) cannot drift apart. They are `StrEnum`s: on the wire and in the database
they are the plain strings of the SPEC (`json.dumps(Phase.SRT) == '"srt"'`).
`JobStatus` lives with the job store (jobs/store.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """A job's pipeline steps, in the order they run."""

    EXTRACT = "extract"
    SPLIT = "split"
    TRANSCRIBE = "transcribe"
    ALIGN = "align"
    #: Who speaks when (only for jobs with `diarize`; skipped entirely otherwise).
    DIARIZE = "diarize"
    SRT = "srt"


@dataclass(frozen=True)
class Step:
    """One phase as a weighted step of a job's progress: [start, end) percent."""

    phase: Phase
    label: str
    share: float
    start: float
    end: float


#: The one table of shares (SPEC section 2) and labels; they add up to 100.
_TABLE: tuple[tuple[Phase, str, float], ...] = (
    (Phase.EXTRACT, "Extract", 5.0),
    (Phase.SPLIT, "Split", 5.0),
    (Phase.TRANSCRIBE, "Transcribe", 70.0),
    (Phase.ALIGN, "Align", 10.0),
    # Cue building is cheap CPU: half of its former share goes to diarization.
    (Phase.DIARIZE, "Speakers", 5.0),
    (Phase.SRT, "Subtitles", 5.0),
)


def _steps() -> tuple[Step, ...]:
    out, at = [], 0.0
    for phase, label, share in _TABLE:
        out.append(Step(phase, label, share, at, at + share))
        at += share
    if [s.phase for s in out] != list(Phase) or at != 100.0:
        raise AssertionError("the phase table must list every Phase once, in order, summing to 100")
    return tuple(out)


STEPS: tuple[Step, ...] = _steps()
_BY_PHASE = {s.phase: s for s in STEPS}


def step(phase: str) -> Step:
    """The step of a phase name (KeyError/ValueError for an unknown one)."""
    return _BY_PHASE[Phase(phase)]


def span(phase: str) -> tuple[float, float]:
    """(start, end) percent of a phase."""
    s = step(phase)
    return s.start, s.end


class VadMethod(StrEnum):
    """Voice-activity backends a job may ask for (`vad_method`); gpu_runner/vad.py has one of
    each name (a test keeps them equal)."""

    SILERO = "silero"
    PYANNOTE = "pyannote"


class Signal(StrEnum):
    """Codes of the job channel's `signal` event (SPEC section 4). `resync` is not one: it is
    an event of its own that the broker sends to a subscriber that fell behind."""

    ALIGNMENT_READY = "alignment_ready"
    #: A diarized job's speakers are on its words (`speakers`: the labels).
    SPEAKERS_READY = "speakers_ready"
    #: A job asked for speakers but goes on without them; the message says why.
    SPEAKERS_OFF = "speakers_off"
    JOB_COMPLETE = "job_complete"
    PAUSED = "paused"
    CANCELED = "canceled"
    REQUEUED = "requeued"


class ModelStatus(StrEnum):
    """A catalog model's state (SPEC section 3)."""

    NOT_DOWNLOADED = "not_downloaded"
    WAITING = "waiting"
    DOWNLOADING = "downloading"
    READY = "ready"
    INCOMPLETE = "incomplete"
    ERROR = "error"
