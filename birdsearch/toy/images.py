"""Procedurally drawn bird photos: a species' plumage in a random pose, scale, scene and light.

A bird is drawn facing right on a transparent layer at twice the photo's size (for anti-aliasing):
tail, body, belly, wing, head, throat, eye, beak, legs, and the species' colour mark on one part. The
layer is scaled, tilted, mirrored and placed on a blurred scene (sky or foliage gradient, leaves, a
branch), then the light is changed (brightness, contrast, colour cast) and the photo downsampled.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from birdsearch.toy.taxonomy import Plumage, ToySpecies

Colour = tuple[int, int, int]

# Scene palettes: (top, bottom) gradient colours.
SCENES: tuple[tuple[Colour, Colour], ...] = (
    ((150, 190, 235), (215, 230, 245)),  # clear sky
    ((175, 185, 195), (220, 220, 215)),  # overcast
    ((60, 100, 55), (120, 150, 80)),  # foliage
    ((95, 120, 70), (170, 160, 120)),  # scrub
    ((230, 190, 150), (160, 170, 200)),  # dusk
    ((200, 195, 170), (150, 135, 105)),  # reeds
)


def jitter(colour: Colour, rng: np.random.Generator, amount: float = 12.0) -> Colour:
    """A colour moved a little, as feathers are never one flat colour."""
    r, g, b = (min(255, max(0, int(c + d))) for c, d in zip(colour, rng.normal(0, amount, 3), strict=True))
    return (r, g, b)


def ellipse_points(cx: float, cy: float, a: float, b: float, angle_deg: float, n: int = 40) -> list[tuple]:
    """Polygon of an ellipse rotated by ``angle_deg`` (PIL only draws axis-aligned ones)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = a * np.cos(t), b * np.sin(t)
    return list(zip(cx + x * cos - y * sin, cy + x * sin + y * cos, strict=True))


def draw_bird_layer(plumage: Plumage, rng: np.random.Generator, side: int) -> Image.Image:
    """The bird facing right, centred on a transparent ``side`` x ``side`` layer."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    length = 0.5 * side  # body length
    cx, cy = side / 2, side / 2
    a, b = length / 2, length / (2 * plumage.body_aspect)
    mark = jitter(plumage.mark, rng, 8)

    def part(name: str, base: Colour) -> Colour:
        return mark if plumage.mark_part == name else jitter(base, rng)

    body = jitter(plumage.body, rng)
    # Legs first: the body hides their tops.
    leg_colour = (70, 60, 50)
    for dx in (-0.15 * a, 0.15 * a):
        draw.line([(cx + dx, cy + 0.7 * b), (cx + dx - 0.1 * a, cy + b + 0.35 * length)], leg_colour, 3)
    # Tail: a wedge from the rear of the body.
    spread = rng.uniform(0.15, 0.35) * b
    tail_end = cx - a - plumage.tail_length * length
    tail = [
        (cx - 0.6 * a, cy - 0.3 * b),
        (tail_end, cy - spread),
        (tail_end, cy + spread + 0.3 * b),
        (cx - 0.6 * a, cy + 0.3 * b),
    ]
    draw.polygon(tail, fill=part("tailed", plumage.body))
    draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=body)
    draw.ellipse(
        [cx - 0.6 * a, cy - 0.35 * b, cx + 0.8 * a, cy + 0.95 * b], fill=part("breasted", plumage.belly)
    )
    wing = ellipse_points(cx - 0.15 * a, cy - 0.1 * b, 0.65 * a, 0.5 * b, rng.uniform(-12, 0))
    draw.polygon(wing, fill=part("winged", plumage.wing))
    if plumage.wing_bars:
        for offset in (-0.1 * a, 0.15 * a):
            draw.line(
                [(cx + offset, cy - 0.45 * b), (cx + offset - 0.1 * a, cy + 0.3 * b)], (235, 235, 225), 3
            )
    draw_head(draw, plumage, rng, (cx + 0.85 * a, cy - 0.75 * b), plumage.head_size * length, body, part)
    return layer


def draw_head(draw: ImageDraw.ImageDraw, plumage: Plumage, rng, centre, r: float, body: Colour, part) -> None:
    """Head, crown, crest, throat, mask, eye and beak around ``centre`` with radius ``r``."""
    hx, hy = centre
    if plumage.crest:
        draw.polygon(
            [(hx - 0.7 * r, hy - 0.5 * r), (hx - 1.4 * r, hy - 1.5 * r), (hx + 0.1 * r, hy - 0.8 * r)],
            fill=part("crowned", plumage.body),
        )
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=body)
    if plumage.mark_part == "crowned":
        draw.pieslice([hx - r, hy - r, hx + r, hy + r], 190, 350, fill=part("crowned", body))
    draw.ellipse(
        [hx - 0.2 * r, hy + 0.2 * r, hx + 0.95 * r, hy + 1.05 * r], fill=part("throated", plumage.belly)
    )
    if plumage.mark_part == "masked":
        draw.polygon(
            [
                (hx - 0.8 * r, hy - 0.45 * r),
                (hx + 0.95 * r, hy - 0.45 * r),
                (hx + 0.95 * r, hy + 0.15 * r),
                (hx - 0.8 * r, hy + 0.25 * r),
            ],
            fill=part("masked", body),
        )
    ex, ey, er = hx + 0.35 * r, hy - 0.15 * r, 0.2 * r
    draw.ellipse([ex - 1.4 * er, ey - 1.4 * er, ex + 1.4 * er, ey + 1.4 * er], fill=(240, 240, 235))
    draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(10, 10, 10))
    beak_length = plumage.beak_length * 2 * r / plumage.head_size * 0.5
    base = hx + 0.85 * r
    draw.polygon(
        [(base, hy - 0.28 * r), (base, hy + 0.22 * r), (base + beak_length, hy + 0.05 * r)],
        fill=jitter(plumage.beak, rng, 6),
    )


def draw_scene(rng: np.random.Generator, side: int) -> Image.Image:
    """A blurred background: gradient and leaves, drawn at a quarter of ``side`` (it is out of focus)."""
    scene = draw_sharp_scene(rng, side // 4)
    return scene.resize((side, side), Image.Resampling.BILINEAR)


def draw_sharp_scene(rng: np.random.Generator, side: int) -> Image.Image:
    top, bottom = SCENES[int(rng.integers(len(SCENES)))]
    top, bottom = jitter(top, rng, 15), jitter(bottom, rng, 15)
    ramp = np.linspace(0, 1, side)[:, None, None]
    pixels = (1 - ramp) * np.array(top) + ramp * np.array(bottom)
    scene = Image.fromarray(np.broadcast_to(pixels, (side, side, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(3, 14))):
        x, y = rng.uniform(0, side, 2)
        rx, ry = rng.uniform(0.03, 0.12, 2) * side
        leaf = jitter((70, 120, 50), rng, 30)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=leaf)
    return scene.filter(ImageFilter.GaussianBlur(side * rng.uniform(0.02, 0.05)))


def draw_photo(species: ToySpecies, rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB photo, ``size`` x ``size``, of ``species`` in a random pose, scene and light."""
    side = 2 * size
    scene = draw_scene(rng, side)
    bird = draw_bird_layer(species.plumage, rng, side)
    tilt = species.plumage.upright + rng.normal(0, 8)
    scale = rng.uniform(0.75, 1.25)
    scaled = max(8, int(side * scale))
    bird = bird.resize((scaled, scaled), Image.Resampling.BILINEAR)
    bird = bird.rotate(tilt, resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        bird = bird.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Keep the bird's centre inside the middle of the photo, so that it is never cropped away.
    x = int(side / 2 - scaled / 2 + rng.uniform(-0.18, 0.18) * side)
    y = int(side / 2 - scaled / 2 + rng.uniform(-0.15, 0.15) * side)
    branch_y = y + 0.8 * scaled  # where the legs end
    ImageDraw.Draw(scene).line(
        [(0, branch_y + rng.normal(0, 6)), (side, branch_y + rng.normal(0, 6))],
        fill=jitter((95, 70, 45), rng, 10),
        width=max(2, int(side * rng.uniform(0.015, 0.04))),
    )
    scene.paste(bird, (x, y), bird)
    return adjust_light(scene.resize((size, size), Image.Resampling.LANCZOS), rng)


def adjust_light(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and a colour cast, as daylight and cameras vary."""
    photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.75, 1.25))
    photo = ImageEnhance.Contrast(photo).enhance(rng.uniform(0.8, 1.2))
    cast = np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15)
    return Image.fromarray(np.clip(np.asarray(photo, dtype=np.float32) * cast, 0, 255).astype(np.uint8))
