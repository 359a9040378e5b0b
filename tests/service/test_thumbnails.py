"""Thumbnails made by the service when the index stored none: upright, bounded, cached by size."""

import io

import pytest
from PIL import Image

from birdsearch.errors import ImageError
from birdsearch.service.thumbnails import ThumbnailCache, make_thumbnail


def test_thumbnail_is_upright_rgb_and_bounded(real_fixtures):
    source = real_fixtures / "derived" / "kodim23_exif_orientation6.jpg"
    with Image.open(source) as raw:
        stored_w, stored_h = raw.size  # stored sideways; EXIF says rotate
    thumb = Image.open(io.BytesIO(make_thumbnail(source, 64)))
    assert thumb.mode == "RGB" and max(thumb.size) == 64
    assert (thumb.size[0] > thumb.size[1]) == (stored_h > stored_w)  # turned upright


def test_odd_modes_and_bad_files(real_fixtures, tmp_path):
    for name in (
        "derived/kodim23_cmyk.jpg",
        "derived/chickadee_rgba_alpha.png",
        "derived/junco_palette_P.png",
    ):
        assert Image.open(io.BytesIO(make_thumbnail(real_fixtures / name, 32))).mode == "RGB"
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(ImageError, match="notes.jpg"):
        make_thumbnail(tmp_path / "notes.jpg", 32)


def test_cache_is_bounded_by_bytes(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (300, 200), (60 * i, 90, 30)).save(paths[-1])
    one = len(make_thumbnail(paths[0], 128))
    cache = ThumbnailCache(max_bytes=int(2.5 * one))
    for i, path in enumerate(paths):
        cache.get((i, 128), path, 128)
    assert cache.used <= 2.5 * one and len(cache._items) == 2
    assert list(cache._items) == [(2, 128), (3, 128)]  # least recently used went first
