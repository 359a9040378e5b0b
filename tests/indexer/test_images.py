"""Decoding: refusals with reasons, mode conversions, and the preprocessing split's exactness."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from birdsearch.errors import ImageError
from birdsearch.indexer.embed import preprocess_from_config
from birdsearch.indexer.images import open_image, split_preprocess, to_rgb


def encode(img, fmt="PNG", **kw):
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "size", "corner"),
    [
        ("derived/kodim23_exif_orientation6.jpg", (768, 512), None),
        ("derived/kodim23_grayscale.jpg", (768, 512), None),
        ("derived/kodim23_cmyk.jpg", (768, 512), None),
        ("derived/junco_palette_P.png", (150, 150), None),
        ("derived/chickadee_rgba_alpha.png", (512, 343), (255, 255, 255)),  # transparent corner -> white
    ],
)
def test_odd_real_images_become_upright_rgb(real_fixtures, name, size, corner):
    img = open_image((real_fixtures / name).read_bytes())
    assert img.mode == "RGB" and img.size == size
    if corner:
        assert img.getpixel((0, 0)) == corner


def test_exif_rotation_matches_the_upright_original(real_fixtures):
    upright = np.asarray(open_image((real_fixtures / "images/kodim23_macaws.png").read_bytes()), dtype=float)
    rotated = np.asarray(
        open_image((real_fixtures / "derived/kodim23_exif_orientation6.jpg").read_bytes()), dtype=float
    )
    assert np.abs(upright - rotated).mean() < 8  # JPEG noise only; unrotated it would be a different picture


def test_refusals_name_the_reason(real_fixtures):
    with pytest.raises(ImageError, match="truncated file"):
        open_image((real_fixtures / "images/ctai_NONBIRD_elephants_truncated.jpg").read_bytes())
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"%PDF-1.4 not a photo")
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(encode(Image.new("RGB", (200, 100))), max_pixels=10_000)


def test_sixteen_bit_and_float_are_scaled_not_clipped():
    gradient = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    img = open_image(encode(Image.fromarray(gradient)))
    values = np.asarray(img)[..., 0].ravel()
    assert values.min() == 0 and values.max() == 255 and 120 <= np.median(values) <= 135
    floats = to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)))
    assert np.asarray(floats)[0, 0].tolist() == [128, 128, 128]
    la = to_rgb(Image.new("LA", (2, 2), (10, 0)))  # fully transparent gray -> white
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_split_preprocess_equals_the_teachers_transform(real_fixtures):
    cfg = {"size": [224, 224], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
           "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest",
           "fill_color": 0}  # fmt: skip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(
        PreprocessCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}), is_train=False
    )
    split = split_preprocess(transform)
    rebuilt = preprocess_from_config(cfg)  # what Ray workers build from the manifest's record
    assert (rebuilt.mean, rebuilt.std) == (split.mean, split.std)
    for name in ("images/kodim23_macaws.png", "images/phoebe_Junco_hyemalis.jpg"):
        img = open_image((real_fixtures / name).read_bytes())
        pixels = torch.from_numpy(split.to_uint8(img))[None]
        assert pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 224, 224)
        assert torch.equal(split.to_model_input(pixels, "cpu")[0], transform(img))
        assert torch.equal(torch.from_numpy(rebuilt.to_uint8(img)), pixels[0])
