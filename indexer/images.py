"""Photo bytes to upright 8-bit RGB, thumbnails, and the teacher's preprocessing split in two.

Decoding refuses what cannot be used with an ``ImageError`` naming the reason (not an image,
truncated, too many pixels) and converts everything else: EXIF orientation, CMYK, grayscale,
palette, alpha (composited on white, as a viewer shows it) and 16-bit or float images (scaled,
not clipped).

The teacher's transform (Resize, CenterCrop, ToTensor, Normalize for open_clip) is split at
ToTensor: the PIL part runs in the decoding workers and yields uint8 arrays (4x less to move than
float32), the float part runs on the model's device. ``test_images`` checks that the split
computes exactly what the teacher's own transform does.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from birdsearch.errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger files are refused as possible decompression bombs
# Pillow's own bomb check would fire at 2x its limit with a generic message; ours comes first.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey photo


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode image bytes to an upright RGB image; raises ImageError with the reason it cannot.

    ``draft``: a JPEG may be decoded at a power-of-two reduced scale whose sides stay at least this
    (libjpeg's DCT scaling: several times faster on large photos); used for thumbnails only.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError("not an image (unrecognised format)") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"not a readable image: {e}") from e
    check_size(*img.size, max_pixels)
    try:
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except OSError as e:
        reason = "truncated file" if "truncated" in str(e) else f"decoding failed: {e}"
        raise ImageError(reason) from e
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"decoding failed: {e}") from e
    return to_rgb(img)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse, before decoding, an image over the pixel limit (a possible decompression bomb) or empty."""
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            f"(a possible decompression bomb; raise --max-pixels to accept it)"
        )
    if width == 0 or height == 0:
        raise ImageError(f"empty image ({width}x{height})")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit/float scaled to 0..255, alpha composited on white."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return high_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV


def high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit integer or float single-channel images to 8-bit gray RGB, scaled by their bit depth.

    Pillow's ``convert('L')`` clips I;16 values at 255, which turns most 16-bit photos white.
    """
    pixels = np.asarray(img)
    if img.mode == "F":
        top = 1.0 if pixels.max(initial=0.0) <= 1.0 else float(pixels.max())
    else:
        top = 65535.0 if pixels.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
    scaled = np.clip(pixels.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def to_chw(img: Image.Image) -> np.ndarray:
    """An RGB image as a (3, H, W) uint8 array."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def thumbnail_jpeg(img: Image.Image, size: int, quality: int = 85) -> bytes:
    """A JPEG whose longest side is at most ``size`` (upright, RGB: browsers show it as indexed)."""
    thumb = img.copy()
    # Bicubic, Pillow's default here: Lanczos took most of a thumbnail's cost on a CPU (BENCHMARKS.md,
    # Indexing throughput), for no difference a viewer sees at 256 px.
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality)  # no optimize pass: it costs a second encode
    return out.getvalue()


@dataclass
class SplitPreprocess:
    """A teacher transform split at ToTensor: PIL work in the workers, float work on the device."""

    pil_stage: Any  # callable: PIL RGB image -> PIL image of the model's input size
    mean: tuple[float, float, float] | None  # Normalize's mean (None: no normalisation)
    std: tuple[float, float, float] | None

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """The worker side: (3, H, W) uint8."""
        out = self.pil_stage(img)
        return to_chw(out.convert("RGB") if out.mode != "RGB" else out)

    def to_model_input(self, pixels: Any, device: Any) -> Any:
        """The device side: (B, 3, H, W) uint8 tensor -> float32 normalised, as ToTensor + Normalize do."""
        import torch

        x = pixels.to(device, non_blocking=True).to(torch.float32).div(255)
        if self.mean is None or self.std is None:
            return x
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)


def split_preprocess(transform: Any) -> SplitPreprocess:
    """Split a torchvision ``Compose`` at its ToTensor step; raises ValueError if it has another shape."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    names = [type(step).__name__ for step in steps]
    to_tensor = next((i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor")), None)
    if to_tensor is None:
        raise ValueError(f"no ToTensor step in the teacher's transform {names}")
    after = steps[to_tensor + 1 :]
    if len(after) > 1 or (after and not isinstance(after[0], T.Normalize)):
        raise ValueError(f"unexpected steps after ToTensor in the teacher's transform {names}")
    mean = tuple(float(m) for m in after[0].mean) if after else None
    std = tuple(float(s) for s in after[0].std) if after else None
    return SplitPreprocess(T.Compose(steps[:to_tensor]), mean, std)  # type: ignore[arg-type]
