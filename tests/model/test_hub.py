"""Model specs resolve to directories the same way for hub caches and local dirs; absence is one clear error."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from birdsearch.errors import ConfigError, ModelUnavailableError
from birdsearch.model import hub, standins
from birdsearch.model.student import Student
from birdsearch.model.teacher import Teacher


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, used by this process (and by subprocesses through HF_HUB_CACHE)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "birdsearch-cache"))
    return cache


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf-hub:imageomics/bioclip-2", ("hf-hub", "imageomics/bioclip-2")),
        ("davidrrobinson/BioLingual", ("hf-hub", "davidrrobinson/BioLingual")),
        ("toy", ("toy", "")),
        ("toy:perfect", ("toy", "perfect")),
    ],
)
def test_specs_parse(spec, expected):
    assert hub.parse_spec(spec) == expected


def test_local_dir_specs_resolve_to_absolute_paths(tmp_path):
    assert hub.parse_spec(f"local-dir:{tmp_path}") == ("local-dir", str(tmp_path.resolve()))
    assert hub.parse_spec(str(tmp_path)) == ("local-dir", str(tmp_path.resolve()))


@pytest.mark.parametrize(
    "spec", ["", "hf-hub:no-slash", "hf-hub:a/b/c", "local-dir:", "./not/a/dir/anywhere"]
)
def test_malformed_specs_are_refused(spec):
    with pytest.raises(ConfigError):
        hub.parse_spec(spec)


def test_missing_local_dir_names_path_and_fix(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist.*birdsearch models download"):
        hub.resolve(f"local-dir:{tmp_path / 'nowhere'}", "teacher")


def test_local_dir_without_config_or_weights(tmp_path):
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json is missing"):
        hub.resolve(f"local-dir:{tmp_path}", "teacher")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="no student weights.*model.safetensors"):
        hub.resolve(f"local-dir:{tmp_path}", "student")


def test_uncached_hub_model_offline_is_one_clear_error(hf_cache):
    with pytest.raises(ModelUnavailableError) as info:
        hub.resolve("hf-hub:imageomics/bioclip-2", "teacher")
    message = str(info.value)
    for expected in ("imageomics/bioclip-2", str(hf_cache), "HF_HUB_OFFLINE", "birdsearch models download"):
        assert expected in message
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set"):
        hub.download("hf-hub:imageomics/bioclip-2", "teacher")


def test_cached_hub_models_load_through_the_cache(hf_cache, tiny_teacher_dir, tiny_student_dir):
    standins.install_in_hf_cache(tiny_teacher_dir, "imageomics/bioclip-2", hf_cache)
    standins.install_in_hf_cache(tiny_student_dir, "davidrrobinson/BioLingual", hf_cache)
    teacher = Teacher.load("hf-hub:imageomics/bioclip-2", device="cpu")
    assert teacher.resolved.source == "hf-hub" and str(hf_cache) in str(teacher.resolved.path)
    assert teacher.embed_texts(["a photo of a bird."]).shape == (1, 32)
    student = Student.load("davidrrobinson/BioLingual", device="cpu")
    assert student.id == "hf-hub:davidrrobinson/BioLingual" and student.dim == 32


def test_cached_config_without_weights_is_not_silently_random(hf_cache, tiny_teacher_dir, tmp_path):
    """open_clip would warn and carry on with random weights; the resolver refuses instead."""
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "open_clip_config.json").write_bytes((tiny_teacher_dir / "open_clip_config.json").read_bytes())
    standins.install_in_hf_cache(partial, "imageomics/bioclip-2", hf_cache)
    with pytest.raises(ModelUnavailableError, match="no teacher weights"):
        Teacher.load("hf-hub:imageomics/bioclip-2", device="cpu")


def test_weights_checksum_is_sha256_and_cached(tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path))
    weights = tiny_teacher_dir / "open_clip_model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert hub.weights_sha256(weights) == expected
    assert expected in (tmp_path / "checksums.json").read_text()


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_models_verify_reports_present_and_missing(hf_cache, tiny_teacher_dir, tiny_student_dir):
    env = dict(os.environ)
    ok = run_cli("models", "verify", "--teacher", f"local-dir:{tiny_teacher_dir}",
                 "--student", str(tiny_student_dir), "--load", "--device", "cpu", env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") == 2
    missing = run_cli("models", "verify", env=env)
    assert missing.returncode == 1
    assert "MISSING teacher" in missing.stdout and "birdsearch models download" in missing.stdout


# ---- sources registered from above ------------------------------------------------------------


def test_a_registered_source_resolves_through_its_resolver(tiny_teacher_dir):
    asked = []
    hub.register_spec_source("fake", lambda kind, variant: asked.append((kind, variant)) or tiny_teacher_dir,
                             hint="'{flag} fake' is a test source")  # fmt: skip
    try:
        resolved = hub.resolve("fake:v1", "teacher")
        assert (resolved.source, resolved.spec, resolved.path) == ("fake", "fake:v1", tiny_teacher_dir)
        assert hub.resolve("fake", "teacher").weights_file.is_file()
        assert asked == [("teacher", "v1"), ("teacher", None)]
        assert "'--teacher fake' is a test source" in hub.provisioning_hint("teacher")
        with pytest.raises(ModelUnavailableError, match="config.json is missing"):  # checked like a local dir
            hub.resolve("fake", "student")
    finally:
        hub.SPEC_SOURCES.unregister("fake")


def test_unknown_sources_name_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model spec source 'fake' in 'fake:v1': known model spec "
                       r"sources are hf-hub, local-dir, toy"):  # fmt: skip
        hub.parse_spec("fake:v1")
    with pytest.raises(ConfigError, match="cannot read model spec 'fake'.*hf-hub, local-dir, toy"):
        hub.parse_spec("fake")
    with pytest.raises(ConfigError, match="cannot register"):
        hub.register_spec_source("hf-hub", lambda kind, variant: Path("."))


def python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_core_knows_no_toy_until_the_toy_world_registers_and_registering_is_cheap():
    code = """
import sys
from birdsearch.errors import ConfigError
from birdsearch.model import hub
try:
    hub.parse_spec("toy")
except ConfigError as e:
    print("refused:", e)
from birdsearch.toy import plugin
plugin.register()
plugin.register()  # harmless twice
print(hub.parse_spec("toy:small"), "torch" in sys.modules, [m for m in sys.modules if m.startswith("birdsearch.toy.")])
"""
    result = python(code, BIRDSEARCH_PLUGINS=None)
    refused, registered = result.stdout.strip().splitlines()
    assert refused.startswith("refused: cannot read model spec 'toy'") and "hf-hub, local-dir (" in refused
    assert registered == "('toy', 'small') False ['birdsearch.toy.plugin']", result.stderr


def test_a_process_finds_the_plugins_its_parent_registered():
    """Registering names the plug-in in BIRDSEARCH_PLUGINS, so that a uvicorn worker or a Ray actor,
    started without the console script, resolves the same specs."""
    assert "birdsearch.toy.plugin" in os.environ["BIRDSEARCH_PLUGINS"].split(
        ","
    )  # tests/conftest.py registered
    child = python("from birdsearch.model import hub; print(hub.parse_spec('toy:perfect'))")
    assert child.stdout.strip() == "('toy', 'perfect')", child.stderr
    broken = python(
        "from birdsearch.model import hub; hub.parse_spec('toy')", BIRDSEARCH_PLUGINS="no.such.module"
    )
    assert "BIRDSEARCH_PLUGINS names 'no.such.module', which cannot be loaded" in broken.stderr
