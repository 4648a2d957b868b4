"""A minimal offline NLTK ``punkt_tab`` model for WhisperX alignment.

Why: ``whisperx.alignment.align`` (3.8.x) splits every segment into sentences with
``nltk.data.load("tokenizers/punkt_tab/<lang>.pickle")`` (``<lang>`` from
``whisperx.utils.PUNKT_LANGUAGES``, ``english`` for every language it does not
list).  NLTK >= 3.9 never unpickles that path: ``load`` maps any
``tokenizers/punkt*/<lang>.pickle`` to ``nltk.tokenize.PunktTokenizer(<lang>)``,
which calls ``nltk.data.find("tokenizers/punkt_tab/<lang>/")`` and reads four plain
text files from that directory:

* ``collocations.tab``  - lines ``word1<TAB>word2``
* ``sent_starters.txt`` - one word per line
* ``abbrev_types.txt``  - one abbreviation per line, lowercase, without its final
  period (``dr``, ``e.g``)
* ``ortho_context.tab`` - lines ``word<TAB>int``

When the model is missing, whisperx calls ``nltk.download("punkt_tab")``, which
needs the internet (and is slow to fail without it), so a service that must work
offline has to provide the data itself.  All four files may be empty (zero bytes -
an empty *line* would not parse); an empty Punkt model still splits sentences at
``.``, ``?`` and ``!`` followed by whitespace, which is all alignment needs (it only
uses the spans to cut a segment into sub-segments).  A short list of common English
abbreviations is written so that "Dr. Smith" or "e.g. this" is not split; ``english``
is also what whisperx falls back to for languages without a Punkt model, and other
languages listed in ``PUNKT_LANGUAGES`` get an empty model each.

Use::

    root = ensure_punkt_tab(data_dir / "nltk_data")
    os.environ["NLTK_DATA"] = str(root)      # before nltk is imported, or:
    nltk.data.path.insert(0, str(root))

This module does not import nltk.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vsrt_service.core.files import write_atomic

__all__ = ["PUNKT_FILES", "ensure_punkt_tab"]

# Files a punkt_tab language directory must contain (nltk.tokenize.punkt).
PUNKT_FILES: tuple[str, ...] = (
    "collocations.tab",
    "sent_starters.txt",
    "abbrev_types.txt",
    "ortho_context.tab",
)

_ENGLISH_ABBREVIATIONS: tuple[str, ...] = (
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "a.m",
    "p.m",
    "u.s",
    "u.k",
    "inc",
    "ltd",
    "co",
    "corp",
    "no",
    "fig",
    "approx",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
)

# Languages whisperx.utils.PUNKT_LANGUAGES names (besides english): an empty model
# each, so a lookup for them never falls through to nltk.download().
_OTHER_LANGUAGES: tuple[str, ...] = (
    "czech",
    "danish",
    "dutch",
    "estonian",
    "finnish",
    "french",
    "german",
    "greek",
    "italian",
    "malayalam",
    "norwegian",
    "polish",
    "portuguese",
    "russian",
    "slovene",
    "spanish",
    "swedish",
    "turkish",
)


def _model_files(language: str) -> dict[str, str]:
    files = dict.fromkeys(PUNKT_FILES, "")
    if language == "english":
        files["abbrev_types.txt"] = "\n".join(_ENGLISH_ABBREVIATIONS) + "\n"
    return files


def _ensure_language(base: Path, language: str) -> None:
    target = base / language
    files = _model_files(language)
    if target.is_dir():
        # Complete a partial directory file by file (each write atomic).
        for name, text in files.items():
            if not (target / name).is_file():
                write_atomic(target / name, text)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{language}-", dir=base))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_punkt_tab(root: Path) -> Path:
    """Create ``root/tokenizers/punkt_tab/english/`` (and an empty model for each
    other language whisperx may ask for) unless present; idempotent and safe to run
    concurrently (each language directory appears complete or not at all).  Existing
    files are never overwritten, so a real downloaded ``punkt_tab`` is kept.
    Returns ``root``; the caller adds it to ``nltk.data.path`` / ``NLTK_DATA``."""
    root = Path(root)
    base = root / "tokenizers" / "punkt_tab"
    base.mkdir(parents=True, exist_ok=True)
    for language in ("english", *_OTHER_LANGUAGES):
        _ensure_language(base, language)
    return root
