"""Synthetic grounding data: coloured shapes on a 6 x 6 cell grid, asked for with the paper's
localization prompt and answered with the cell's box.

A 96 x 96 picture, cells of 16 px (one CLIP patch each): 3 objects on distinct cells, each a
circle, square or triangle in one of 4 colours, no two with the same colour AND shape.
The answer to ``the {colour} {shape}`` is ``[ x1 , y1 , x2 , y2 ]`` in sixths of the image,
each coordinate one token (``0.167``), parseable by feather.eval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE, CELL = 96, 16
GRID = SIZE // CELL
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
COORDS = [f"{k / GRID:.3f}" for k in range(GRID + 1)]  # "0.000" ... "1.000"
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: list[tuple[str, str, int]]  # (colour, shape, cell)
    target: int  # index into objects


def answer_text(cell: int) -> str:
    row, col = divmod(cell, GRID)
    return f"[ {COORDS[col]} , {COORDS[row]} , {COORDS[col + 1]} , {COORDS[row + 1]} ]"


def bbox_pixels(cell: int) -> list[int]:
    """COCO [x, y, w, h] of ``cell`` in the 96 x 96 picture."""
    row, col = divmod(cell, GRID)
    return [col * CELL, row * CELL, CELL, CELL]


def draw(objects: list[tuple[str, str, int]]) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    d = ImageDraw.Draw(img)
    for colour, shape, cell in objects:
        row, col = divmod(cell, GRID)
        x, y = col * CELL + 2, row * CELL + 2
        box = (x, y, x + CELL - 5, y + CELL - 5)
        fill = COLOURS[colour]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(x + (CELL - 5) / 2, y), (x + CELL - 5, y + CELL - 5), (x, y + CELL - 5)], fill=fill)
    return img


def scene(rng: np.random.Generator, n_objects: int = 3) -> Scene:
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    picked = rng.choice(len(kinds), size=n_objects, replace=False)
    cells = rng.choice(GRID * GRID, size=n_objects, replace=False)
    objects = [(kinds[k][0], kinds[k][1], int(c)) for k, c in zip(picked, cells)]
    return Scene(draw(objects), objects, int(rng.integers(n_objects)))
