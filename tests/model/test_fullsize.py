"""The real architectures, proven offline: full-size BioCLIP-2 and BioLingual with random weights.

Each model is saved in its publisher's on-disk format, laid out in a Hugging Face cache exactly as
a download leaves it, and loaded with HF_HUB_OFFLINE=1 through the code path real weights take
(``hf-hub:imageomics/bioclip-2``, ``davidrrobinson/BioLingual``). The full-size teacher's load is a slow
test; the default suite checks its architecture on the meta device.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from birdsearch.model import audio, standins
from birdsearch.model.encoder import DistilledAudioEncoder, EncoderCard, load_encoder, save_encoder
from birdsearch.model.names import Taxon
from birdsearch.model.student import DEFAULT_STUDENT, Student
from birdsearch.model.teacher import DEFAULT_TEACHER, Teacher

JUNCO = Taxon("Junco hyemalis", "Dark-eyed Junco", order="Passeriformes", family="Passerellidae")


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf-cache")
    saved = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(cache)
    yield cache
    constants.HF_HUB_CACHE = saved


@pytest.fixture(scope="module")
def teacher(hf_cache, tmp_path_factory):
    source = standins.save_random_full_teacher(tmp_path_factory.mktemp("bioclip2"))
    standins.install_in_hf_cache(source, DEFAULT_TEACHER.removeprefix("hf-hub:"), hf_cache)
    return Teacher.load(DEFAULT_TEACHER, device="cpu")


@pytest.fixture(scope="module")
def student(hf_cache, tmp_path_factory):
    source = standins.save_random_full_student(tmp_path_factory.mktemp("biolingual"))
    standins.install_in_hf_cache(source, DEFAULT_STUDENT, hf_cache)
    return Student.load(DEFAULT_STUDENT, device="cpu")


def test_bioclip2_architecture_has_the_published_shape():
    """BioCLIP-2's architecture without its 1.7 GB of weights (the meta device): ViT-L/14, 224 px, 768-d.

    Loading it at full size from the hub cache is the slow test below; the loading path itself is
    checked with tiny models in test_hub.py (test_cached_hub_models_load_through_the_cache).
    """
    with torch.device("meta"):
        model = standins.build_teacher(standins.BIOCLIP2_MODEL_CFG)
    assert 425e6 < sum(p.numel() for p in model.parameters()) < 430e6  # ViT-L/14 CLIP: 428M
    assert model.visual.image_size == (224, 224) and model.visual.patch_size == (14, 14)
    assert model.visual.output_dim == 768 and tuple(model.text_projection.shape) == (768, 768)


@pytest.mark.slow  # builds, saves and loads 428M random parameters: about 25 s of CPU
def test_bioclip2_architecture_loads_from_the_hub_cache(teacher, audio_dir):
    assert teacher.resolved.source == "hf-hub" and teacher.id == "hf-hub:imageomics/bioclip-2"
    assert teacher.dim == 768
    params = sum(p.numel() for p in teacher.model.parameters())
    assert 425e6 < params < 430e6  # ViT-L/14 CLIP: 428M
    pre = teacher.preprocess_config
    assert pre["size"] == [224, 224] and pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    photo = Image.new("RGB", (300, 200), (120, 90, 60))
    images = teacher.embed_images([photo])
    species = teacher.embed_species([JUNCO], templates="single")
    assert images.shape == species.shape == (1, 768)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(1))
    assert len(teacher.weights_sha256) == 64


def test_biolingual_architecture_loads_from_the_hub_cache(student):
    assert student.id == "hf-hub:davidrrobinson/BioLingual" and student.dim == 512
    audio_params = sum(p.numel() for p in student.model.audio_model.parameters())
    assert 27e6 < audio_params < 30e6  # HTSAT-tiny: about 28M
    cfg = student.model.config
    assert not cfg.audio_config.enable_fusion
    text = cfg.text_config  # RoBERTa-base
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (768, 12, 50265)
    front = student.front_end_config
    assert (front.sample_rate, front.window_s, front.n_mels, front.hop_length, front.n_fft) == (
        48_000,
        10.0,
        64,
        480,
        1024,
    )


def test_our_audio_path_equals_the_transformers_pipeline(student, audio_dir):
    """Decode + our torch mel + the audio tower == ClapFeatureExtractor + ClapModel.get_audio_features."""
    from transformers import ClapFeatureExtractor

    rec = audio.load(audio_dir / "oss_birds_10s_32k.wav")
    windows = audio.split(rec.samples, rec.sample_rate).samples
    ours = student.embed_windows(windows)
    extractor = ClapFeatureExtractor.from_pretrained(student.resolved.path)
    inputs = extractor(list(windows), sampling_rate=48_000, return_tensors="pt")
    with torch.no_grad():
        out = student.model.get_audio_features(input_features=inputs["input_features"])
    reference = out.pooler_output if hasattr(out, "pooler_output") else out
    reference = torch.nn.functional.normalize(reference, dim=-1)
    cosine = (ours * reference).sum(dim=-1)
    assert torch.all(cosine > 0.9999), cosine


def test_full_size_distilled_encoder_round_trip(student, tmp_path):
    encoder = DistilledAudioEncoder.from_student(student.model, out_dim=768)
    card = EncoderCard(
        base_student=student.id,
        audio_config=student.model.config.audio_config.to_dict(),
        projection_dim=512,
        teacher={"id": DEFAULT_TEACHER, "dim": 768, "weights_sha256": ""},
        text_format="taxon_com",
        templates="openai",
        front_end=student.front_end_config.to_dict(),
    )
    path = save_encoder(encoder, card, tmp_path / "encoder")
    loaded = load_encoder(path, device="cpu")
    window = (0.05 * np.random.default_rng(0).standard_normal((1, 480_000))).astype(np.float32)
    expected = encoder.eval()(student.mel(window)).detach()
    torch.testing.assert_close(loaded.embed_windows(window), expected, atol=1e-5, rtol=1e-5)
