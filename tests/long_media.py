"""A synthetic aligned transcript of a long recording, as the runner's align step returns it.

No runner can align three hours of speech inside a test, but the service's handling of such
a result (decoding, storing, cue building, serving) is what must not block its event loop.
The words are the test sentences cycled, with whisperx's shapes: most words timed and
scored, a few (numbers) without times.
"""

from __future__ import annotations

import random

from tests.media import LONG_SENTENCES
from vsrt_service.core.protocol import AlignedSegment, Word

__all__ = ["aligned_result"]


def aligned_result(hours: float = 3.0, words_per_segment: int = 15, seed: int = 3) -> list[AlignedSegment]:
    """About 10,000 words and 670 segments an hour (30k words in 2000 segments for 3 h)."""
    rng = random.Random(seed)
    vocabulary = [w for sentence in LONG_SENTENCES for w in sentence.split()]
    end_of_audio = hours * 3600
    segments: list[AlignedSegment] = []
    t, k = 0.4, 0
    while t < end_of_audio - 10:
        words: list[Word] = []
        start = t
        for _ in range(rng.randint(words_per_segment - 5, words_per_segment + 5)):
            text = vocabulary[k % len(vocabulary)]
            k += 1
            length = 0.05 + 0.045 * len(text) * rng.uniform(0.7, 1.3)
            if rng.random() < 0.01:
                words.append(Word(word=str(rng.randint(2, 1999)), score=None))  # not placed
            else:
                words.append(
                    Word(
                        word=text,
                        start=round(t, 3),
                        end=round(t + length, 3),
                        score=round(rng.uniform(0.3, 1.0), 3),
                    )
                )
            t += length + rng.uniform(0.01, 0.12)
        segments.append(
            AlignedSegment(
                start=round(start, 3), end=round(t, 3), text=" ".join(w["word"] for w in words), words=words
            )
        )
        t += rng.uniform(0.2, 1.2)
    return segments
