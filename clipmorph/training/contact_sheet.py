"""Tile images into one labelled grid (PIL), e.g. the results of a parameter sweep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

LINE_HEIGHT = 14  # PIL's default bitmap font is 11 px tall
PADDING = 4


def label_height(lines: int) -> int:
    return lines * LINE_HEIGHT + 2 * PADDING


def sheet_size(count: int, columns: int, cell: int, lines: int) -> tuple[int, int]:
    """(W, H) of a sheet of `count` cells of `cell` px squares with `lines` label lines each."""
    rows = -(-count // columns)
    return columns * cell, rows * (cell + label_height(lines))


def tile(
    images: Sequence[Image.Image | Path], labels: Sequence[Sequence[str]], columns: int, cell: int = 256
) -> Image.Image:
    """Each image scaled to fit a `cell` square (aspect kept, centred), its label lines printed beneath."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError("no images to tile")
    lines = max(len(lab) for lab in labels)
    sheet = Image.new("RGB", sheet_size(len(images), columns, cell, lines), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        img = Image.open(img).convert("RGB") if isinstance(img, Path | str) else img.convert("RGB")
        img = ImageOps.contain(img, (cell, cell), Image.LANCZOS)
        x0, y0 = (i % columns) * cell, (i // columns) * (cell + label_height(lines))
        sheet.paste(img, (x0 + (cell - img.width) // 2, y0 + (cell - img.height) // 2))
        for j, text in enumerate(label):
            draw.text((x0 + PADDING, y0 + cell + PADDING + j * LINE_HEIGHT), text, fill="black", font=font)
    return sheet


def grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[Sequence[str]]) -> Image.Image:
    """Images at their own size (not scaled, so detail can be judged), one label line beneath each.

    `labels[r][c]` names `rows[r][c]`; a column is as wide as its widest image, a row as tall as its
    tallest, and smaller images sit in the top-left corner of their cell.
    """
    if not rows or any(len(r) != len(lab) for r, lab in zip(rows, labels, strict=True)):
        raise ValueError("need one label per image and at least one row")
    columns = max(len(r) for r in rows)
    widths = [max(r[c].width for r in rows if c < len(r)) for c in range(columns)]
    heights = [max(img.height for img in r) + label_height(1) for r in rows]
    sheet = Image.new("RGB", (sum(widths), sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    y = 0
    for r, (row, row_labels) in enumerate(zip(rows, labels, strict=True)):
        x = 0
        for c, (img, text) in enumerate(zip(row, row_labels, strict=True)):
            sheet.paste(img.convert("RGB"), (x, y))
            draw.text((x + PADDING, y + heights[r] - LINE_HEIGHT - PADDING), text, fill="black", font=font)
            x += widths[c]
        y += heights[r]
    return sheet
