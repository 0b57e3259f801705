"""Pillow-drawn images of the organism: a 5 x 5 grid of 32-pixel cells on a 160-pixel square.

Every image is a grid of cells and the vision tower's patches are the cells (patch 32), so each
image token sees exactly one cell. A cell is blank, holds one shape (circle, square or triangle in
one of six colours) or one token of typed text (FigStep-style typography: the text of a request,
one tokenizer token per cell, in reading order). Word-initial tokens are drawn as the word piece;
a piece that continues a word is drawn with a leading hyphen ("-ing"), so the reader can tell them
apart. Drawing is deterministic: the same cells always give the same pixels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 32
GRID = 5
IMAGE_SIZE = CELL * GRID
NUM_CELLS = GRID * GRID
FONT_SIZE = 14
PIXEL_MEAN = 1.0  # the processor maps white to 0, so a blank cell is an all-zero patch
PIXEL_STD = 0.5

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (230, 190, 10),
    "purple": (140, 50, 180),
    "orange": (245, 125, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")


@dataclass(frozen=True)
class Cell:
    """One grid cell: ``kind`` is ``"blank"``, ``"shape"`` or ``"glyph"``.

    For shapes ``colour``/``shape``/``size``/``dx``/``dy`` say what is drawn where; for glyphs
    ``text`` is the string drawn and ``token_id`` the tokenizer id it stands for.
    """

    kind: str = "blank"
    colour: str = ""
    shape: str = ""
    size: int = 24
    dx: int = 0
    dy: int = 0
    text: str = ""
    token_id: int = -1


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def draw_shape_cell(cell: Cell) -> Image.Image:
    """A 32 x 32 white cell with one filled shape."""
    image = Image.new("RGB", (CELL, CELL), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    colour = COLOURS[cell.colour]
    half = cell.size / 2
    cx, cy = CELL / 2 + cell.dx, CELL / 2 + cell.dy
    box = (cx - half, cy - half, cx + half, cy + half)
    if cell.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif cell.shape == "square":
        inset = half * 0.15
        draw.rectangle((box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset), fill=colour)
    elif cell.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    else:
        raise ValueError(f"unknown shape {cell.shape!r}; expected one of {SHAPES}")
    return image


@lru_cache(maxsize=65536)
def _glyph_array(text: str) -> np.ndarray:
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    width, height = max(int(right - left), 1), max(int(bottom - top), 1)  # whole pixels already
    canvas = Image.new("L", (width + 2, height + 2), 255)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=0, font=font)
    limit_w, limit_h = CELL - 2, CELL - 8
    if canvas.width > limit_w or canvas.height > limit_h:
        canvas = canvas.resize(
            (min(canvas.width, limit_w), min(canvas.height, limit_h)), Image.Resampling.BILINEAR
        )
    cell = Image.new("L", (CELL, CELL), 255)
    cell.paste(canvas, ((CELL - canvas.width) // 2, (CELL - canvas.height) // 2))
    return np.asarray(cell)


def draw_glyph_cell(cell: Cell) -> Image.Image:
    """A 32 x 32 white cell with ``cell.text`` in black, squeezed to fit when it is long."""
    return Image.fromarray(_glyph_array(cell.text)).convert("RGB")


def draw_cell(cell: Cell) -> Image.Image:
    """Draw any cell."""
    if cell.kind == "shape":
        return draw_shape_cell(cell)
    if cell.kind == "glyph":
        return draw_glyph_cell(cell)
    return Image.new("RGB", (CELL, CELL), (255, 255, 255))


def compose(cells: Sequence[Cell]) -> Image.Image:
    """A 160 x 160 image from up to 25 cells in reading order (missing cells are blank)."""
    if len(cells) > NUM_CELLS:
        raise ValueError(f"an image holds at most {NUM_CELLS} cells, got {len(cells)}")
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    for index, cell in enumerate(cells):
        if cell.kind != "blank":
            image.paste(draw_cell(cell), ((index % GRID) * CELL, (index // GRID) * CELL))
    return image


def glyph_text(piece: str) -> str:
    """How a decoded token is drawn: word start as is, a word continuation with a leading hyphen."""
    if piece.startswith(" "):
        text = piece[1:]
    elif piece[:1].isalnum():
        text = "-" + piece
    else:
        text = piece
    return text if text.strip() else "_"


def text_tokens(text: str, tokenizer) -> list[int]:
    """Token ids of ``text`` as typography draws it (a leading space, so every word starts a token)."""
    return tokenizer(" " + " ".join(text.split()), add_special_tokens=False)["input_ids"]


def glyph_cells(token_ids: Sequence[int], tokenizer) -> list[Cell]:
    """One glyph cell per token id."""
    return [Cell(kind="glyph", text=glyph_text(tokenizer.decode([t])), token_id=int(t)) for t in token_ids]


def typographic_cells(text: str, tokenizer, start: int = 0) -> list[Cell] | None:
    """Cells of ``text`` typed one token per cell from cell ``start``; ``None`` if it does not fit."""
    ids = text_tokens(text, tokenizer)
    if start + len(ids) > NUM_CELLS:
        return None
    return [Cell()] * start + glyph_cells(ids, tokenizer)


def typographic_image(text: str, tokenizer) -> Image.Image | None:
    """A FigStep-style image of ``text`` (``None`` if it needs more than 25 tokens)."""
    cells = typographic_cells(text, tokenizer)
    return None if cells is None else compose(cells)


def word_cells(word: str, tokenizer) -> list[Cell]:
    """A single word (or short phrase) typed from the middle row."""
    cells = typographic_cells(word, tokenizer, start=2 * GRID)
    if cells is None:
        raise ValueError(f"{word!r} does not fit in one image")
    return cells


def shape_cells(rng: random.Random, colour: str, shape: str, count: int) -> list[Cell]:
    """``count`` shapes of one colour and kind at distinct random cells."""
    positions = rng.sample(range(NUM_CELLS), count)
    cells = [Cell()] * NUM_CELLS
    for position in positions:
        cells[position] = Cell(
            kind="shape",
            colour=colour,
            shape=shape,
            size=rng.randint(18, 28),
            dx=rng.randint(-2, 2),
            dy=rng.randint(-2, 2),
        )
    return cells


def random_shape_spec(rng: random.Random) -> tuple[str, str, int]:
    """A random (colour, shape, count) triple."""
    return rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(1, 3)


def blank_image() -> Image.Image:
    """A plain white image of the organism's size."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
