"""The torch log-mel equals transformers.ClapFeatureExtractor (BioLingual's own preprocessing) on real audio."""

import numpy as np
import pytest
import torch

from birdsearch.errors import FrontEndSettingError
from birdsearch.model import audio, standins
from birdsearch.model.mel import (
    PARITY_ATOL_DB,
    PARITY_ATOL_DB_SIGNAL,
    PARITY_RANGE_DB,
    FrontEndConfig,
    LogMel,
    MelFrontEnd,
)

# Different rates (16, 22.05, 32, 44.1, 48 kHz), codecs (FLAC 24/16-bit, Vorbis, PCM WAV, MP3, Opus),
# channel counts (mono, stereo), and lengths (0.14 s to 30 s).
RECORDINGS = [
    "perch_21100_36_48_16k_10s.flac",
    "librosa_robin_22k_mono.ogg",
    "oss_birds_10s_32k.wav",
    "maad_spinetail_44k1_12s.wav",
    "derived_spinetail_stereo_44k1.mp3",
    "derived_birds_stereo_48k.opus",
    "birdnet_soundscape_48k_30s.flac",
    "oss_veryshort_44k1_0.14s.wav",
]


@pytest.fixture(scope="module")
def config():
    """BioLingual's front end, read back from a saved ClapFeatureExtractor as a real model dir holds it."""
    from transformers import ClapFeatureExtractor

    return FrontEndConfig.from_feature_extractor(ClapFeatureExtractor(**standins.BIOLINGUAL_FEATURES))


@pytest.fixture(scope="module")
def extractor(config):
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(**standins.BIOLINGUAL_FEATURES)


def assert_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    """Within PARITY_ATOL_DB_SIGNAL where the signal is (80 dB of the loudest bin), PARITY_ATOL_DB anywhere."""
    assert ours.shape == reference.shape
    diff = np.abs(ours - reference)
    for window in range(reference.shape[0]):
        signal = reference[window] > reference[window].max() - PARITY_RANGE_DB
        assert diff[window][signal].max() <= PARITY_ATOL_DB_SIGNAL
    assert diff.max() <= PARITY_ATOL_DB


@pytest.mark.parametrize("name", RECORDINGS)
def test_torch_mel_equals_clap_feature_extractor(audio_dir, config, extractor, name):
    rec = audio.load(audio_dir / name)
    windows = audio.split(rec.samples, rec.sample_rate, config.window_s, hop_s=5.0)
    ours = LogMel(config)(torch.from_numpy(windows.samples)).numpy()
    # The extractor pads short input itself ("repeatpad"); give it the raw recording in that case.
    raw = [rec.samples] if windows.padded else list(windows.samples)
    reference = np.asarray(extractor(raw, sampling_rate=48_000, return_tensors="np")["input_features"])
    assert ours.shape == (len(windows.samples), 1, 1001, 64)
    assert_parity(ours, reference)


def test_random_crop_matches_rand_trunc(audio_dir, config, extractor):
    """For audio longer than 10 s the extractor takes a random crop; the same crop gives the same features."""
    rec = audio.load(audio_dir / "maad_spinetail_44k1_12s.wav")
    length = config.window_samples
    np.random.seed(3)
    reference = np.asarray(
        extractor(rec.samples, sampling_rate=48_000, return_tensors="np")["input_features"]
    )
    np.random.seed(3)
    start = np.random.randint(0, len(rec.samples) - length + 1)  # the extractor's own draw
    ours = LogMel(config)(torch.from_numpy(rec.samples[start : start + length][None])).numpy()
    assert_parity(ours, reference)


def test_front_end_implementations_agree(audio_dir, config):
    rec = audio.load(audio_dir / "oss_birds_10s_32k.wav")
    windows = audio.split(rec.samples, rec.sample_rate).samples
    torch_features = MelFrontEnd(config, "cpu", implementation="torch")(windows).numpy()
    numpy_features = MelFrontEnd(config, "cpu", implementation="numpy")(windows).numpy()
    assert_parity(torch_features, numpy_features)


def test_cpu_front_end_window_by_window_equals_one_batched_call(config):
    windows = (0.1 * np.random.default_rng(0).standard_normal((3, config.window_samples))).astype(np.float32)
    by_window = MelFrontEnd(config, "cpu", implementation="torch")(windows)
    batched = LogMel(config)(torch.from_numpy(windows))
    assert by_window.shape == batched.shape == (3, 1, 1001, config.n_mels)
    torch.testing.assert_close(by_window, batched, rtol=0, atol=1e-4)


def test_front_end_refuses_windows_of_the_wrong_length(config):
    with pytest.raises(ValueError, match="480000 samples"):
        MelFrontEnd(config, "cpu")(np.zeros((1, 1000), dtype=np.float32))


def test_config_reads_the_extractor_settings():
    from transformers import ClapFeatureExtractor

    fe = ClapFeatureExtractor(**{**standins.BIOLINGUAL_FEATURES, "frequency_max": 12_000, "hop_length": 320})
    config = FrontEndConfig.from_feature_extractor(fe)
    assert (config.f_max, config.hop_length, config.mel_scale) == (12_000, 320, "slaney")
    np.testing.assert_allclose(config.mel_filters(), fe.mel_filters_slaney, rtol=1e-6)
    assert FrontEndConfig.from_dict(config.to_dict()) == config


# Every feature-changing setting the front end carries over, each away from BioLingual's value.
IMPLEMENTED_SETTINGS = {
    "sampling_rate": {"sampling_rate": 32_000, "frequency_max": 16_000},
    "max_length_s": {"max_length_s": 5},
    "frequency_min/max": {"frequency_min": 500, "frequency_max": 9_000},
    "fft_window_size": {"fft_window_size": 2048},
    "hop_length": {"hop_length": 320},
    "feature_size": {"feature_size": 80},
}


@pytest.mark.parametrize("changes", IMPLEMENTED_SETTINGS.values(), ids=IMPLEMENTED_SETTINGS.keys())
def test_each_implemented_setting_equals_the_extractor(audio_dir, changes):
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor(**{**standins.BIOLINGUAL_FEATURES, **changes})
    config = FrontEndConfig.from_feature_extractor(extractor)
    rec = audio.load(audio_dir / "maad_spinetail_44k1_12s.wav", sample_rate=config.sample_rate)
    window = rec.samples[: config.window_samples][None]  # exactly one window: no truncation draw
    ours = LogMel(config)(torch.from_numpy(window)).numpy()
    reference = np.asarray(
        extractor(list(window), sampling_rate=config.sample_rate, return_tensors="np")["input_features"]
    )
    assert ours.shape == (1, 1, config.n_frames, config.n_mels)
    assert_parity(ours, reference)


REFUSED_SETTINGS = [
    ("top_db", 80),
    ("padding_value", 0.5),
    ("truncation", "fusion"),
    ("truncation", "head"),
    ("padding", "pad"),
    ("padding", "repeat"),
    ("max_length_s", 0),
    ("hop_length", 0),
]


@pytest.mark.parametrize(("setting", "value"), REFUSED_SETTINGS)
def test_each_unsupported_setting_is_refused_by_name(setting, value):
    from transformers import ClapFeatureExtractor

    fe = ClapFeatureExtractor(**standins.BIOLINGUAL_FEATURES)
    setattr(fe, setting, value)  # as from_pretrained sets it from preprocessor_config.json
    with pytest.raises(FrontEndSettingError, match=f"{setting}={value!r}") as caught:
        FrontEndConfig.from_feature_extractor(fe)
    assert (caught.value.setting, caught.value.value) == (setting, value)


def test_fusion_is_refused_where_transformers_fails_on_an_unfused_model(tiny_student_dir):
    from transformers import ClapFeatureExtractor, ClapModel

    model = ClapModel.from_pretrained(tiny_student_dir).eval()
    assert not model.config.audio_config.enable_fusion
    fusion = ClapFeatureExtractor(**{**standins.BIOLINGUAL_FEATURES, "truncation": "fusion"})
    features = fusion([np.ones(48_000 * 12, dtype=np.float32)], sampling_rate=48_000, return_tensors="pt")
    with pytest.raises(RuntimeError), torch.no_grad():
        model.get_audio_features(**features)
    with pytest.raises(FrontEndSettingError, match="truncation='fusion'.*fusion CLAP model"):
        FrontEndConfig.from_feature_extractor(fusion)


@pytest.mark.parametrize(
    ("field", "value"),
    [("frequency_max", 30_000), ("max_length_s", 10.00001)],
)
def test_impossible_sizes_are_refused(field, value):
    from transformers import ClapFeatureExtractor

    fe = ClapFeatureExtractor(**standins.BIOLINGUAL_FEATURES)
    setattr(fe, field, value)
    with pytest.raises(FrontEndSettingError, match=field):
        FrontEndConfig.from_feature_extractor(fe)


def test_a_saved_card_with_fusion_filters_is_refused():
    with pytest.raises(FrontEndSettingError, match="mel_scale='htk'"):
        FrontEndConfig.from_dict({**FrontEndConfig().to_dict(), "mel_scale": "htk"})


def student_with_preprocessor(source, directory, **changes):
    import json
    import shutil

    shutil.copytree(source, directory)
    path = directory / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return f"local-dir:{directory}"


def test_a_student_whose_preprocessor_config_sets_top_db_is_refused(tiny_student_dir, tmp_path):
    from birdsearch.model.student import Student

    spec = student_with_preprocessor(tiny_student_dir, tmp_path / "s", top_db=80)
    with pytest.raises(FrontEndSettingError, match="top_db=80"):
        Student.load(spec, device="cpu")


def test_a_student_whose_feature_size_does_not_fit_its_audio_tower_is_refused(tiny_student_dir, tmp_path):
    from birdsearch.model.student import Student

    spec = student_with_preprocessor(tiny_student_dir, tmp_path / "s", feature_size=80)
    with pytest.raises(FrontEndSettingError, match="feature_size=80.*takes 64 mel bins"):
        Student.load(spec, device="cpu")


@pytest.mark.gpu
def test_gpu_mel_equals_cpu_mel(audio_dir, config):
    rec = audio.load(audio_dir / "oss_birds_10s_32k.wav")
    windows = audio.split(rec.samples, rec.sample_rate).samples
    cpu = MelFrontEnd(config, "cpu", implementation="torch")(windows).numpy()
    gpu = MelFrontEnd(config, "cuda")(windows).cpu().numpy()
    assert_parity(gpu, cpu)
