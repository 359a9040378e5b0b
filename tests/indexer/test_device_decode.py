"""JPEGs decoded on the model's device: the same photos, the same orientation, the same neighbours.

Runs here with the CPU build of the very function that is nvJPEG on CUDA (torchvision's
``decode_jpeg``); the CUDA check is marked ``gpu``.
"""

import numpy as np
import pytest
import torch

from birdsearch.errors import ConfigError, ImageError
from birdsearch.indexer import device_decode
from birdsearch.indexer.device_decode import jpeg_upright_size
from birdsearch.indexer.embed import ImageEmbedder
from birdsearch.indexer.images import open_image
from birdsearch.indexer.pipeline import IndexConfig, run_index
from birdsearch.indexer.store import IndexRoot

PLAIN_JPEGS = [
    "images/phoebe_Junco_hyemalis.jpg",
    "images/phoebe_Passer_domesticus.jpg",
    "derived/kodim23_grayscale.jpg",
    "derived/kodim23_exif_orientation6.jpg",
]


def pil_pixels(embedder: ImageEmbedder, data: bytes) -> torch.Tensor:
    return torch.from_numpy(embedder.split.to_uint8(open_image(data)))


def test_header_reading_routes_only_plain_jpegs_to_the_device(real_fixtures):
    def size(name, max_pixels=10**8):
        return jpeg_upright_size((real_fixtures / name).read_bytes(), max_pixels)

    assert size("derived/kodim23_exif_orientation6.jpg") == (768, 512)  # stored 512x768, rotated
    assert size("derived/kodim23_grayscale.jpg") == (768, 512)
    assert size("derived/kodim23_cmyk.jpg") is None  # PIL converts CMYK
    assert size("images/kodim23_macaws.png") is None
    with pytest.raises(ImageError, match="decompression bomb"):
        size("derived/kodim23_grayscale.jpg", max_pixels=1000)


def test_device_decoding_matches_pil_on_real_photos(real_fixtures, tiny_teacher_spec):
    embedder = ImageEmbedder(tiny_teacher_spec, "cpu")
    decoder = embedder.jpeg_decoder(max_pixels=10**8)
    blobs = [(real_fixtures / name).read_bytes() for name in PLAIN_JPEGS]
    device_pixels, errors = decoder([np.frombuffer(b, dtype=np.uint8) for b in blobs])
    assert errors == [None] * len(blobs)
    reference = torch.stack([pil_pixels(embedder, b) for b in blobs])
    assert device_pixels.dtype == torch.uint8 and device_pixels.shape == reference.shape
    # Another IDCT and a tensor resize: a few levels apart on average, never a different picture
    # (a missed EXIF rotation or a swapped channel moves the mean by tens of levels).
    mean_abs = (device_pixels.float() - reference.float()).abs().mean(dim=(1, 2, 3))
    assert (mean_abs < 3.0).all(), mean_abs
    cosine = (embedder.embed(device_pixels) * embedder.embed(reference)).sum(axis=1)
    assert (cosine > 0.995).all(), cosine


def test_a_rejected_jpeg_falls_back_and_the_rest_of_the_batch_decodes(
    real_fixtures, tiny_teacher_spec, monkeypatch
):
    monkeypatch.setattr(device_decode, "DECODE_CHUNK", 3)  # the batch spans two decoding calls
    embedder = ImageEmbedder(tiny_teacher_spec, "cpu")
    decoder = embedder.jpeg_decoder(max_pixels=10**8)
    good = (real_fixtures / "images/phoebe_Junco_hyemalis.jpg").read_bytes()
    truncated = (real_fixtures / "images/ctai_NONBIRD_elephants_truncated.jpg").read_bytes()
    garbage = b"\xff\xd8\xff" + bytes(500)  # a JPEG signature, then nothing either decoder reads
    pixels, errors = decoder([np.frombuffer(b, dtype=np.uint8) for b in (good, truncated, garbage, good)])
    assert errors[0] is None and errors[3] is None
    assert errors[1] == "truncated file" and errors[2] is not None
    assert torch.equal(pixels[0], pixels[3]) and pixels[0].float().std() > 10


def test_index_built_with_device_decoding_equals_the_pil_build(real_gallery, tmp_path, tiny_teacher_spec):
    def build(out, how):
        config = IndexConfig(
            gallery=real_gallery, out=out, teacher=tiny_teacher_spec, device="cpu", workers=2,
            progress=False, jpeg_decode=how,
        )  # fmt: skip
        return run_index(config), IndexRoot(out).open_current()

    pil_summary, pil_version = build(tmp_path / "pil", "workers")
    device_summary, device_version = build(tmp_path / "device", "device")
    assert dict(device_summary.failed) == dict(pil_summary.failed)
    assert device_summary.count == pil_summary.count == 17
    assert device_version.manifest["build"]["jpeg_decode"] == "device"
    assert pil_version.manifest["build"]["jpeg_decode"] == "workers"

    def by_key(version):
        rows = version.images(np.arange(version.count))
        return {r.key: (r.width, r.height, version.vectors()[r.id]) for r in rows}

    pil, device = by_key(pil_version), by_key(device_version)
    assert pil.keys() == device.keys()
    for key, (width, height, vector) in pil.items():
        assert device[key][:2] == (width, height), key
        assert float(vector @ device[key][2]) > 0.995, key
    assert device_version.thumbnail_file(0).is_file()


def test_device_decoding_is_refused_where_it_cannot_run(real_gallery, tmp_path, tiny_teacher_spec):
    config = IndexConfig(
        gallery=real_gallery, out=tmp_path / "idx", teacher=tiny_teacher_spec, device="cpu",
        progress=False, jpeg_decode="device", runner="ray",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="Ray runner"):
        run_index(config)
    with pytest.raises(ConfigError, match="jpeg_decode"):
        run_index(IndexConfig(gallery=real_gallery, out=tmp_path / "x", teacher=tiny_teacher_spec,
                              device="cpu", progress=False, jpeg_decode="gpu"))  # fmt: skip


@pytest.mark.gpu
def test_nvjpeg_on_cuda_matches_the_cpu_decoder(real_fixtures, tiny_teacher_spec):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    blobs = [np.frombuffer((real_fixtures / n).read_bytes(), dtype=np.uint8) for n in PLAIN_JPEGS]
    cpu, _ = ImageEmbedder(tiny_teacher_spec, "cpu").jpeg_decoder(10**8)(blobs)
    gpu, errors = ImageEmbedder(tiny_teacher_spec, "cuda").jpeg_decoder(10**8)(blobs)
    assert errors == [None] * len(blobs) and gpu.device.type == "cuda"
    assert (gpu.cpu().float() - cpu.float()).abs().mean() < 2.0
