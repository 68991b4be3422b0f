"""A sample grid: generated images with their prompts written under them (Pillow only)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

FONT_SIZE = 11
PADDING = 6


def _font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def wrap_text(
    text: str, font: PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont, width: int, max_lines: int
) -> list[str]:
    """Greedy word wrap to `width` pixels; a cut-off last line ends with an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + "…"]
    return lines


def sample_grid(
    images: Sequence[PIL.Image.Image],
    captions: Sequence[str],
    columns: int = 4,
    cell: int = 160,
    caption_lines: int = 4,
) -> PIL.Image.Image:
    """Images scaled to `cell` px in rows of `columns`, each with its caption (wrapped) underneath."""
    if len(images) != len(captions) or not images:
        raise ValueError("need one caption per image, and at least one image")
    font = _font(FONT_SIZE)
    line_height = FONT_SIZE + 3
    caption_height = caption_lines * line_height + PADDING
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    width = columns * (cell + PADDING) + PADDING
    height = rows * (cell + caption_height + PADDING) + PADDING
    grid = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x = PADDING + (i % columns) * (cell + PADDING)
        y = PADDING + (i // columns) * (cell + caption_height + PADDING)
        grid.paste(image.convert("RGB").resize((cell, cell), PIL.Image.Resampling.LANCZOS), (x, y))
        for j, line in enumerate(wrap_text(caption, font, cell, caption_lines)):
            draw.text((x, y + cell + 3 + j * line_height), line, fill=(0, 0, 0), font=font)
    return grid


def save_grid(path: Path, grid: PIL.Image.Image) -> Path:
    from model.io import write_bytes_atomically

    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return write_bytes_atomically(Path(path), buffer.getvalue())
