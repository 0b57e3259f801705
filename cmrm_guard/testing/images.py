"""Deterministic test images for the tiny VLMs."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw


def tiny_image(seed: int = 0, size: int = 32) -> Image.Image:
    """Draws a small deterministic RGB test image: a coloured background, noise and two shapes.

    Args:
        seed: Selects the colours, the noise and the shape positions; equal seeds give equal images.
        size: Width and height in pixels.

    Returns:
        An RGB ``PIL.Image.Image`` of ``size`` x ``size`` pixels.
    """
    rng = random.Random(seed)

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    image = Image.new("RGB", (size, size), colour())
    noise = bytes(rng.randrange(256) for _ in range(size * size * 3))
    image = Image.blend(image, Image.frombytes("RGB", (size, size), noise), alpha=0.25)
    draw = ImageDraw.Draw(image)
    for draw_shape in (draw.rectangle, draw.ellipse):
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        x1, y1 = x0 + rng.randrange(size // 4, size // 2 + 1), y0 + rng.randrange(size // 4, size // 2 + 1)
        draw_shape((x0, y0, x1, y1), fill=colour())
    return image
