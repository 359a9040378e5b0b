"""Fixtures for model tests: the committed real recordings and tiny models in the real on-disk formats."""

from pathlib import Path

import pytest

from birdsearch.model import standins

AUDIO_DIR = Path(__file__).resolve().parents[1] / "data" / "audio"


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """tests/data/audio: real recordings of several rates, formats and channel counts."""
    return AUDIO_DIR


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip CLIP saved as open_clip_config.json + open_clip_model.safetensors."""
    directory = tmp_path_factory.mktemp("tiny_teacher")
    model = standins.build_teacher(standins.TINY_TEACHER_CFG, seed=0)
    return standins.save_teacher(model, directory, standins.TINY_TEACHER_CFG)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ClapModel saved with save_pretrained, with its tokenizer and feature extractor."""
    directory = tmp_path_factory.mktemp("tiny_student")
    model = standins.build_student(standins.tiny_clap_config(), seed=0)
    tokenizer = standins.train_bpe_tokenizer(["Sound of a Dark-eyed Junco", "Sound of a American Robin"], 300)
    return standins.save_student(model, tokenizer, directory)
