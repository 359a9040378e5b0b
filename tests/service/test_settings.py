"""Settings: environment with the BIRDSEARCH_ prefix, a config file, validation at start."""

import json

import pytest

from birdsearch.errors import ConfigError
from birdsearch.service.settings import Settings, get_settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BIRDSEARCH_"):
            monkeypatch.delenv(name)


def test_the_deployment_names_are_read_from_the_environment(monkeypatch, tmp_path):
    checkpoint = tmp_path / "encoder"
    checkpoint.mkdir()
    env = {
        "BIRDSEARCH_INDEX_ROOT": str(tmp_path / "index"),
        "BIRDSEARCH_CHECKPOINT": str(checkpoint),
        "BIRDSEARCH_STUDENT": "local-dir:/models/biolingual",
        "BIRDSEARCH_DEVICE": "cuda:1",
        "BIRDSEARCH_ADMIN_KEY": "s3cret",
        "BIRDSEARCH_MAX_UPLOAD_BYTES": "1048576",
        "BIRDSEARCH_MAX_DURATION_S": "120",
        "BIRDSEARCH_CORS_ORIGINS": "https://a.example, https://b.example",
        "BIRDSEARCH_MAX_BATCH": "128",
        "BIRDSEARCH_MAX_WAIT_MS": "3.5",
        "BIRDSEARCH_HOST": "0.0.0.0",
        "BIRDSEARCH_PORT": "9000",
        "BIRDSEARCH_WORKERS": "4",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.index_root == tmp_path / "index"
    assert s.checkpoint == str(checkpoint)
    assert s.student == "local-dir:/models/biolingual"
    assert s.device == "cuda:1"
    assert s.admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert (s.max_upload_bytes, s.max_duration_s, s.max_batch, s.max_wait_ms) == (1048576, 120.0, 128, 3.5)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 9000, 4)
    assert s.default_mode == "distilled" and not s.cascade_enabled


def test_defaults_mean_cascade_with_biolingual():
    s = Settings()
    assert s.checkpoint == "" and s.default_mode == "cascade" and s.cascade_enabled
    assert s.student == "davidrrobinson/BioLingual"
    assert s.cors_origins == [] and s.admin_key is None
    assert s.max_batch == 0 and s.batch_size == 4  # no GPU here: the CPU default


def test_batch_size_default_follows_the_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings(device="auto").batch_size == 64
    assert Settings(device="auto", max_batch=16).batch_size == 16


def test_cors_as_json_list(monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_CORS_ORIGINS", '["https://a.example"]')
    assert load_settings().cors_origins == ["https://a.example"]


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
def test_config_file_and_environment_wins(monkeypatch, tmp_path, suffix):
    values = {"max_batch": 16, "port": 8123, "student": "toy"}
    path = tmp_path / f"service{suffix}"
    if suffix == ".toml":
        path.write_text('max_batch = 16\nport = 8123\nstudent = "toy"\n')
    elif suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("max_batch: 16\nport: 8123\nstudent: toy\n")
    monkeypatch.setenv("BIRDSEARCH_CONFIG", str(path))
    monkeypatch.setenv("BIRDSEARCH_PORT", "8999")
    s = load_settings()
    assert (s.max_batch, s.student, s.port) == (16, "toy", 8999)


def test_missing_or_unknown_config_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("BIRDSEARCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_settings()
    other = tmp_path / "service.ini"
    other.write_text("[x]")
    monkeypatch.setenv("BIRDSEARCH_CONFIG", str(other))
    with pytest.raises(ConfigError, match="unknown config format '.ini'"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BIRDSEARCH_PORT", "70000", "BIRDSEARCH_PORT"),
        ("BIRDSEARCH_MAX_BATCH", "-1", "BIRDSEARCH_MAX_BATCH"),
        ("BIRDSEARCH_MAX_WAIT_MS", "-1", "BIRDSEARCH_MAX_WAIT_MS"),
        ("BIRDSEARCH_DEVICE", "tpu", "tpu"),
        ("BIRDSEARCH_CHECKPOINT", "/no/such/encoder", "does not exist"),
        ("BIRDSEARCH_MAX_UPLOAD_BYTES", "ten", "BIRDSEARCH_MAX_UPLOAD_BYTES"),
    ],
)
def test_bad_values_are_refused_with_their_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_no_model_at_all_is_refused(monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_CASCADE", "never")
    with pytest.raises(ConfigError, match="no model to answer with"):
        load_settings()


def test_budget_must_hold_one_upload():
    with pytest.raises(ConfigError, match="audio_memory_bytes"):
        load_settings(audio_memory_bytes=2**21, max_decoded_bytes=2**22)


def test_get_settings_is_cached_and_overridable(tmp_path):
    from birdsearch.service.app import create_app, settings_of

    get_settings.cache_clear()
    assert get_settings() is get_settings()
    mine = Settings(index_root=tmp_path, port=8111)
    app = create_app(mine)
    assert settings_of(app) is mine
    get_settings.cache_clear()
