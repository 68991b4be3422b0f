"""Small synthetic image sets with captions, for CPU demos and tests: no download needed.

`python -m model.synthetic --out DIR --n 48 [--style shapes|brand] [--seed 0]` writes PNGs with sidecar
captions. "shapes": a circle, square or triangle of a random colour on a random background, in one of three
class folders (by shape). "brand": one fixed look (a yellow square on red, a dark stripe), varying only in
position and size, to fine-tune an adapter on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")


def _draw_shape(
    draw: PIL.ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def shapes_image(rng: np.random.Generator, size: int) -> tuple[PIL.Image.Image, str, str]:
    names = list(COLOURS)
    background, foreground = rng.choice(len(names), 2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    image = PIL.Image.new("RGB", (size, size), COLOURS[names[background]])
    extent = int(rng.integers(size // 3, size * 2 // 3))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    _draw_shape(
        PIL.ImageDraw.Draw(image), shape, (x0, y0, x0 + extent, y0 + extent), COLOURS[names[foreground]]
    )
    return image, shape, f"a {names[foreground]} {shape} on a {names[background]} background"


def brand_image(rng: np.random.Generator, size: int) -> tuple[PIL.Image.Image, str, str]:
    image = PIL.Image.new("RGB", (size, size), COLOURS["red"])
    draw = PIL.ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    draw.rectangle((x0, y0, x0 + extent, y0 + extent), fill=COLOURS["yellow"])
    draw.rectangle((0, size - size // 8, size, size), fill=COLOURS["black"])
    return image, "brand", "a yellow square on red with a black stripe"


def write_dataset(out_dir: Path, n: int, style: str = "shapes", seed: int = 0, size: int = 64) -> Path:
    """Write `n` PNGs (+ `.txt` captions) to `out_dir`; "shapes" images go to one subfolder per shape."""
    if style not in ("shapes", "brand"):
        raise ValueError(f"style must be 'shapes' or 'brand', got {style!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, label, caption = (shapes_image if style == "shapes" else brand_image)(rng, size)
        folder = out_dir / label if style == "shapes" else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{style}_{i:04d}.png")
        (folder / f"{style}_{i:04d}.txt").write_text(caption)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--style", default="shapes", choices=["shapes", "brand"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    write_dataset(args.out, args.n, args.style, args.seed, args.size)
    print(f"wrote {args.n} {args.style} images to {args.out}")


if __name__ == "__main__":
    main()
