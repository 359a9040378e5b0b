"""Thumbnails: the indexer's stored JPEG when there is one, else made here once and kept in memory."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from birdsearch.errors import ImageError


def make_thumbnail(path: Path, size: int) -> bytes:
    """A JPEG no larger than ``size`` on its longest side, upright (EXIF) and RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((size, size))
            if image.mode != "RGB":
                image = image.convert("RGB")
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageError(f"photo {path.name} cannot be decoded for a thumbnail: {e}") from e
    return out.getvalue()


class ThumbnailCache:
    """Least-recently-used JPEG bytes, bounded by their total size."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, path: Path, size: int) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make_thumbnail(path, size)
        with self._lock:
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self.used += len(data)
                while self.used > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self.used -= len(dropped)
        return data
