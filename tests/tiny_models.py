"""Tiny randomly initialised models for tests and benchmarks (no download needed).

torch/transformers are imported inside the functions, so importing this module is
cheap and works without them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

__all__ = ["CHAR_VOCAB", "make_tiny_wav2vec2"]

# Character vocabulary for the CTC head: the ids of the special tokens follow the
# usual wav2vec2 layout (<pad> = 0 is the CTC blank, which whisperx looks up by name).
CHAR_VOCAB: list[str] = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "'"]


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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
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

        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
