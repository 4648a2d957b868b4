"""Tiny randomly initialised models for tests and benchmarks (no download needed).

torch/transformers are imported inside the functions, so importing this module is
cheap and works without them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CHAR_VOCAB", "DIARIZATION_CONFIG", "make_tiny_diarization", "make_tiny_wav2vec2"]

# Character vocabulary for the CTC head: the ids of the special tokens follow the
# usual wav2vec2 layout (<pad> = 0 is the CTC blank, which whisperx looks up by name).
CHAR_VOCAB: list[str] = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "'"]


@contextlib.contextmanager
def _building(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir` to build a model in; it becomes `out_dir` only once the
    build finished, so an interrupted build never leaves half a model where one is looked for."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def make_tiny_wav2vec2(out_dir: Path, language: str = "en") -> Path:
    """Save a tiny, randomly initialised (``torch.manual_seed(0)``)
    ``Wav2Vec2ForCTC`` and its ``Wav2Vec2Processor`` into ``out_dir`` (safetensors;
    about 0.3 MB), loadable with ``whisperx.load_align_model(language_code=...,
    device="cpu", model_name=str(out_dir))``.

    The feature encoder has the real wav2vec2 strides (5,2,2,2,2,2,2: one frame per
    320 samples, 20 ms at 16 kHz) with tiny channel counts.  The vocabulary is
    lowercase characters with ``|`` as the word delimiter, as whisperx expects.  The
    weights are random, so alignments are valid but not accurate.  The directory is
    written atomically (temp dir + rename); an existing ``out_dir`` is replaced.
    ``language`` is recorded in the config only (``vsrt_language``)."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out_dir = Path(out_dir)
    with _building(out_dir) as tmp:
        vocab_file = tmp / "vocab.json"
        vocab_file.write_text(json.dumps({c: i for i, c in enumerate(CHAR_VOCAB)}), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            unk_token="<unk>",
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            word_delimiter_token="|",
            do_lower_case=False,
        )
        feature_extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=False,
        )
        processor = Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)

        config = Wav2Vec2Config(
            vocab_size=len(CHAR_VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            conv_dim=(16, 16, 16, 16, 16, 16, 32),
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            conv_bias=False,
            feat_extract_norm="group",
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            do_stable_layer_norm=False,
            apply_spec_augment=False,
            mask_time_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            ctc_loss_reduction="mean",
        )
        config.vsrt_language = language
        torch.manual_seed(0)
        model = Wav2Vec2ForCTC(config)
        model.eval()
        model.save_pretrained(str(tmp), safe_serialization=True)
        processor.save_pretrained(str(tmp))

    return out_dir


#: The real community-1 pipeline's config.yaml, as pyannote.audio 4 reads it: `$model/<dir>`
#: names a subfolder of the pipeline's own directory (or hub repository).
DIARIZATION_CONFIG = """\
dependencies:
  pyannote.audio: 4.0.0

pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
    segmentation: $model/segmentation
    segmentation_batch_size: 32

params:
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
  segmentation:
    min_duration_off: 0.0
"""


def _save_pyannote_model(model: object, path: Path, half: bool = False) -> None:
    """A Lightning checkpoint as `Model.from_pretrained` reads it (what a Trainer would save);
    `half` stores float16 weights (loading casts them back), for a smaller file."""
    import lightning
    import torch

    state = model.state_dict()  # type: ignore[attr-defined]
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    checkpoint: dict[str, object] = {
        "state_dict": state,
        "hyper_parameters": dict(model.hparams),  # type: ignore[attr-defined]
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def make_tiny_diarization(out_dir: Path) -> Path:
    """Save a randomly initialised (``torch.manual_seed(0)``) pyannote.audio 4 speaker
    diarization pipeline with the layout of ``pyannote/speaker-diarization-community-1``:
    ``config.yaml``, ``segmentation/pytorch_model.bin`` (PyanNet, powerset of 3 speakers
    at most 2 at once, 10 s chunks: the real specifications with a tiny LSTM and head),
    ``embedding/pytorch_model.bin`` (WeSpeakerResNet34, whose size is fixed by its class:
    about 13 MB in float16) and ``plda/{xvec_transform,plda}.npz`` (random, well-conditioned).

    ``pyannote.audio.Pipeline.from_pretrained(out_dir)`` loads it; speakers found are
    arbitrary (random weights) but segments are valid. Written atomically."""
    import numpy as np
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34
    from pyannote.audio.models.segmentation import PyanNet

    out_dir = Path(out_dir)
    with _building(out_dir) as tmp:
        torch.manual_seed(0)
        segmentation = PyanNet(
            sincnet={"stride": 10},
            lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True},
            linear={"hidden_size": 16, "num_layers": 1},
        )
        segmentation.specifications = Specifications(
            problem=Problem.MONO_LABEL_CLASSIFICATION,
            resolution=Resolution.FRAME,
            duration=10.0,
            min_duration=None,
            warm_up=(0.0, 0.0),
            classes=["speaker#1", "speaker#2", "speaker#3"],
            powerset_max_classes=2,
            permutation_invariant=True,
        )
        segmentation.build()
        segmentation.eval()
        _save_pyannote_model(segmentation, tmp / "segmentation" / "pytorch_model.bin")

        embedding = WeSpeakerResNet34()  # as pyannote's own wespeaker/convert.py saves it
        embedding.specifications = Specifications(
            problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0
        )
        embedding.eval()
        _save_pyannote_model(embedding, tmp / "embedding" / "pytorch_model.bin", half=True)

        rng = np.random.default_rng(0)
        dim, lda_dim = 256, 128
        (tmp / "plda").mkdir()
        lda = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :lda_dim]
        np.savez(
            tmp / "plda" / "xvec_transform.npz",
            mean1=rng.standard_normal(dim) * 0.01,
            mean2=rng.standard_normal(lda_dim) * 0.01,
            lda=lda,
        )
        np.savez(
            tmp / "plda" / "plda.npz",
            mu=np.zeros(lda_dim),
            tr=np.linalg.qr(rng.standard_normal((lda_dim, lda_dim)))[0],
            psi=np.sort(rng.uniform(0.5, 5.0, lda_dim))[::-1].copy(),
        )
        (tmp / "config.yaml").write_text(DIARIZATION_CONFIG, encoding="utf-8")

    return out_dir
