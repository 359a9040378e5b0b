"""Stand-in models saved in the publishers' exact on-disk formats.

Real weights cannot be downloaded where this project is built and tested, so the loading code is
exercised with models built here: the full-size architectures with random weights (for the
round-trip tests and the benchmarks, which time exactly like the real ones), and small ones that the
toy world trains. Both are written exactly as the publishers ship theirs:

- teacher (open_clip): ``open_clip_config.json`` ``{model_cfg, preprocess_cfg}`` +
  ``open_clip_model.safetensors``;
- student (transformers): ``ClapModel.save_pretrained`` (``config.json`` + ``model.safetensors``),
  the tokenizer's ``save_pretrained`` and ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

# BioCLIP-2's architecture: open_clip ViT-L/14, 768-d, OpenAI CLIP preprocessing.
BIOCLIP2_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
}
OPENAI_PREPROCESS_CFG: dict[str, Any] = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
# Tiny architectures of the same classes, for unit tests that must run in seconds.
TINY_TEACHER_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clap_config(projection_dim: int = 32) -> Any:
    """A ClapConfig with a small HTSAT (same 64-mel, 10 s input) and a small RoBERTa text tower."""
    from transformers import ClapConfig

    audio = {
        "patch_embeds_hidden_size": 16,
        "depths": [1, 1, 1, 1],
        "num_attention_heads": [1, 1, 2, 2],
        "hidden_size": 128,
        "num_mel_bins": 64,
        "spec_size": 256,
        "enable_fusion": False,
    }
    text = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 128, "max_position_embeddings": 130}  # fmt: skip
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


# BioLingual's feature extractor (mission.md): 48 kHz, 10 s, 64 mels, hop 480, FFT 1024, rand_trunc + repeatpad.
BIOLINGUAL_FEATURES: dict[str, Any] = {
    "feature_size": 64,
    "sampling_rate": 48_000,
    "hop_length": 480,
    "max_length_s": 10,
    "fft_window_size": 1024,
    "frequency_min": 0,
    "frequency_max": 14_000,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}


def save_teacher(
    model: Any, directory: str | Path, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None
) -> Path:
    """Save an open_clip CLIP as ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or OPENAI_PREPROCESS_CFG}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / "open_clip_model.safetensors")
    return directory


def build_teacher(model_cfg: dict[str, Any], seed: int = 0) -> Any:
    """An open_clip ``CLIP`` from a config dict, with seeded random weights."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**model_cfg)


def save_random_full_teacher(directory: str | Path, seed: int = 0) -> Path:
    """The full-size BioCLIP-2 architecture (ViT-L/14, 428M parameters) with random weights."""
    return save_teacher(build_teacher(BIOCLIP2_MODEL_CFG, seed), directory, BIOCLIP2_MODEL_CFG)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE tokenizer in RoBERTa's format, trained on ``texts`` (no download needed)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    from tokenizers.processors import RobertaProcessing

    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=512)


def save_student(
    model: Any, tokenizer: Any, directory: str | Path, features: dict[str, Any] | None = None
) -> Path:
    """Save a ClapModel, its tokenizer and feature extractor as ``from_pretrained`` expects them."""
    from transformers import ClapFeatureExtractor

    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ClapFeatureExtractor(**(features or BIOLINGUAL_FEATURES)).save_pretrained(directory)
    return directory


def build_student(config: Any, seed: int = 0) -> Any:
    """A ``transformers.ClapModel`` from a ClapConfig, with seeded random weights."""
    from transformers import ClapModel

    torch.manual_seed(seed)
    return ClapModel(config)


def save_random_full_student(directory: str | Path, seed: int = 0) -> Path:
    """The full-size BioLingual architecture (HTSAT-tiny unfused + RoBERTa-base, 512-d) with random weights.

    transformers' ClapConfig defaults are exactly that architecture. The tokenizer is a small BPE
    trained here in RoBERTa's format (the real vocabulary cannot be downloaded); its ids fit the
    full 50,265-entry embedding table.
    """
    from transformers import ClapConfig

    tokenizer = train_bpe_tokenizer(
        ["Sound of a American Robin", "Sound of a Dark-eyed Junco"], vocab_size=400
    )
    return save_student(build_student(ClapConfig(), seed), tokenizer, directory)


def install_in_hf_cache(
    source: str | Path, repo_id: str, cache_dir: str | Path, revision: str = "main"
) -> Path:
    """Lay a model directory out as the Hugging Face cache stores a download of ``repo_id``.

    ``<cache>/models--org--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> blob}``, so
    that ``hf-hub:`` specs resolve offline exactly as they do after ``birdsearch models download``.
    Returns the snapshot directory.
    """
    import hashlib
    import os

    source, repo = Path(source), Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    commit = hashlib.sha1("".join(str(p.relative_to(source)) for p in files).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
