"""JPEG photos decoded on the model's device: nvJPEG on a GPU, so that CPU decoding does not cap indexing.

With device decoding on, a decoding worker only reads the file, checks its hash and reads the JPEG
header (format, mode, size, EXIF orientation: no pixels are decoded); the main process decodes the
whole batch's bytes in one ``torchvision.io.decode_jpeg`` call on the device, applies the EXIF
orientation there, and resizes and crops as the teacher's transform does, on the device.
Everything that is not a plain RGB or grayscale JPEG (PNG, CMYK, 16-bit, ...) takes the usual PIL
path in the workers, and a JPEG the device decoder rejects falls back to PIL in this process: a
photo is never lost to the faster path.

The result is not bit-identical to PIL's: another IDCT and a tensor resize (antialiased bicubic,
as Pillow's) move pixel values by a few levels. ``tests/indexer/test_device_decode.py`` bounds the
difference in embedding space (cosine against the PIL path) on real photos, with the CPU
build of the same function; on CUDA the decoder is nvJPEG.

torchvision marks its image decoders deprecated from 0.29 in favour of TorchCodec; they work in the
version this project pins, and this module is the one place to change when they go.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from birdsearch.errors import ImageError
from birdsearch.indexer.images import check_size

log = logging.getLogger(__name__)
# Known and pinned (see above): not a warning for every batch of every indexing run.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

# Modes the device decoder turns into RGB exactly as PIL's convert("RGB") does.
DEVICE_MODES = ("RGB", "L")
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # the ones that swap width and height
# Photos decoded per call and resized before the next call: full-size decoded photos (up to the
# pixel limit, 100 MP = 300 MB each) must not pile up on the device for a whole batch of 256.
DECODE_CHUNK = 32


def jpeg_upright_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """The upright (width, height) of a JPEG the device can decode; None for anything else.

    Reads the header only. Raises ImageError for a JPEG over the pixel limit or empty, as the PIL
    path does.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # the PIL path names the problem
    if img.format != "JPEG" or img.mode not in DEVICE_MODES:
        return None
    width, height = img.size
    check_size(width, height, max_pixels)
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: let PIL decide what the photo is
        return None
    return (height, width) if orientation in ROTATED_ORIENTATIONS else (width, height)


def device_resize(pil_stage: Any) -> Callable[[Any], Any] | None:
    """The teacher's PIL stage (Resize, CenterCrop, RGB conversion) as tensor ops; None if it has others."""
    from torchvision.transforms import CenterCrop, Resize
    from torchvision.transforms import functional as F

    steps: list[Callable[[Any], Any]] = []
    for step in getattr(pil_stage, "transforms", []):
        if isinstance(step, Resize):
            size, interpolation, max_size = step.size, step.interpolation, step.max_size
            steps.append(lambda x, s=size, i=interpolation, m=max_size: F.resize(x, s, i, m, antialias=True))
        elif isinstance(step, CenterCrop):
            steps.append(lambda x, s=step.size: F.center_crop(x, s))
        elif "convert" in type(step).__name__.lower() or "convert" in getattr(step, "__name__", ""):
            continue  # RGB conversion: the decoder already returns RGB
        else:
            return None
    if not steps:
        return None

    def run(image: Any) -> Any:
        for apply in steps:
            image = apply(image)
        return image

    return run


class DeviceJpegDecoder:
    """JPEG bytes to the teacher's input size, decoded and resized on ``device``."""

    def __init__(self, pil_stage: Any, device: Any, fallback: Callable[[bytes], np.ndarray]):
        """
        Args:
            pil_stage: the teacher transform's PIL part (``SplitPreprocess.pil_stage``).
            device: where to decode (CUDA: nvJPEG; CPU: libjpeg-turbo, the same function).
            fallback: bytes to an upright (3, H, W) uint8 RGB array at full size through PIL, for a
                JPEG the device rejects; raises ImageError when PIL cannot decode it either.
        """
        resize = device_resize(pil_stage)
        if resize is None:
            raise ValueError(f"the teacher's transform has steps the device path cannot run: {pil_stage}")
        self.resize = resize
        self.device = device
        self.fallback = fallback

    def __call__(self, jpegs: list[np.ndarray]) -> tuple[Any, list[str | None]]:
        """(N, 3, H, W) uint8 on the device, and per photo None or the reason it failed (its row is zeros)."""
        import torch

        rows: list[Any] = []
        errors: list[str | None] = []
        for start in range(0, len(jpegs), DECODE_CHUNK):
            images, chunk_errors = self._decode(jpegs[start : start + DECODE_CHUNK])
            for image, error in zip(images, chunk_errors, strict=True):
                rows.append(None if error else self._to_uint8(self.resize(image.to(torch.float32))))
            errors += chunk_errors
        shape = next((r.shape for r in rows if r is not None), None)
        if shape is None:
            return None, errors
        blank = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        return torch.stack([blank if r is None else r for r in rows]), errors

    def _decode(self, jpegs: list[np.ndarray]) -> tuple[list[Any], list[str | None]]:
        """Decoded (3, H, W) uint8 tensors; one call for the batch, photo by photo if it fails."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [self._as_tensor(j) for j in jpegs]
        try:
            images = decode_jpeg(
                data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True
            )
            return list(images), [None] * len(images)
        except RuntimeError:  # one bad photo fails the whole call: find it
            pass
        images, errors = [], []
        for raw, blob in zip(data, jpegs, strict=True):
            try:
                images.append(
                    decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
                )
                errors.append(None)
            except RuntimeError as e:
                log.debug("device decoder rejected a JPEG (%s); decoding it with PIL", e)
                image, error = self._with_pil(blob)
                images.append(image)
                errors.append(error)
        return images, errors

    def _with_pil(self, blob: np.ndarray) -> tuple[Any, str | None]:
        import torch

        try:
            pixels = self.fallback(blob.tobytes())
        except ImageError as e:
            return None, str(e)
        return torch.from_numpy(pixels).to(self.device), None

    @staticmethod
    def _as_tensor(blob: np.ndarray) -> Any:
        import torch

        array = np.ascontiguousarray(blob, dtype=np.uint8)
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    @staticmethod
    def _to_uint8(image: Any) -> Any:
        import torch

        return image.round_().clamp_(0, 255).to(torch.uint8)
