"""The watermark's bit accuracy after what marketplaces do to images, and its cost in PSNR (core/watermark.py).

For each image size and test image: embed a random 48-bit payload, apply each transformation, read the payload
back and count the right bits; `detected` says whether `detect` (the decision verify uses) found the mark.
Prints a markdown table and writes JSON with `--out`.

    python -m benchmarks.bench_watermark                 # sizes 64..768, 6 images, about a minute on 2 cores
    python -m benchmarks.bench_watermark --sizes 256 --images 2
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from core.watermark import PAYLOAD_BITS, detect, embed, read

Transform = Callable[[Image.Image], Image.Image]


def jpeg(quality: int) -> Transform:
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return apply


def resize(factor: float) -> Transform:
    def apply(image: Image.Image) -> Image.Image:
        size = (round(image.width * factor), round(image.height * factor))
        return image.resize(size, Image.Resampling.LANCZOS)

    return apply


def crop(fraction: float) -> Transform:
    """Cut `fraction` of the width and height, unevenly from the four edges."""

    def apply(image: Image.Image) -> Image.Image:
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        return image.crop((dx // 3, dy // 3, image.width - (dx - dx // 3), image.height - (dy - dy // 3)))

    return apply


def chain(*steps: Transform) -> Transform:
    def apply(image: Image.Image) -> Image.Image:
        for step in steps:
            image = step(image)
        return image

    return apply


TRANSFORMS: dict[str, Transform] = {
    "none (PNG)": lambda image: image,
    "JPEG q75": jpeg(75),
    "JPEG q50": jpeg(50),
    "resize 1/2": resize(0.5),
    "crop 5%": crop(0.05),
    "crop 10%": crop(0.10),
    "resize 1/2 + JPEG q75": chain(resize(0.5), jpeg(75)),
    "crop 5% + resize 1/2 + JPEG q75": chain(crop(0.05), resize(0.5), jpeg(75)),
    "resize 1/4": resize(0.25),
    "rotate 2°": lambda image: image.rotate(2, resample=Image.Resampling.BICUBIC),
}


def test_images(size: int, count: int) -> list[Image.Image]:
    """Natural photographs from scikit-image's sample data, cropped square and resized."""
    from skimage import data

    sources = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.immunohistochemistry(),
        data.hubble_deep_field(),
    ]
    images = []
    for array in sources[:count]:
        side = min(array.shape[:2])
        square = Image.fromarray(array[:side, :side]).convert("RGB")
        images.append(square.resize((size, size), Image.Resampling.LANCZOS))
    return images


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i, dtype=np.float64) for i in (a, b))
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(sizes: list[int], count: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    rows = []
    for size in sizes:
        images = test_images(size, count)
        psnrs, embed_s, read_s = [], [], []
        correct: dict[str, list[float]] = {name: [] for name in TRANSFORMS}
        detected: dict[str, int] = dict.fromkeys(TRANSFORMS, 0)
        for image in images:
            payload = rng.getrandbits(PAYLOAD_BITS)
            started = time.perf_counter()
            marked = embed(image, payload)
            embed_s.append(time.perf_counter() - started)
            psnrs.append(psnr(image, marked))
            for name, transform in TRANSFORMS.items():
                changed = transform(marked)
                started = time.perf_counter()
                found = read(changed)
                read_s.append(time.perf_counter() - started)
                right = 0 if found is None else PAYLOAD_BITS - bin(found.payload ^ payload).count("1")
                correct[name].append(right / PAYLOAD_BITS)
                decision = detect(changed)
                detected[name] += int(decision is not None and decision.payload == payload)
        false_positives = sum(detect(t(image)) is not None for image in images for t in TRANSFORMS.values())
        rows.append(
            {
                "size": size,
                "images": len(images),
                "psnr_db": round(float(np.mean(psnrs)), 2),
                "psnr_min_db": round(float(np.min(psnrs)), 2),
                "embed_ms": round(1000 * float(np.mean(embed_s)), 1),
                "read_ms": round(1000 * float(np.mean(read_s)), 1),
                "bit_accuracy": {name: round(float(np.mean(v)), 4) for name, v in correct.items()},
                "exact_payload_detected": {name: f"{detected[name]}/{len(images)}" for name in TRANSFORMS},
                "false_positives_unmarked": f"{false_positives}/{len(images) * len(TRANSFORMS)}",
            }
        )
    return {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "rows": rows,
    }


def markdown(report: dict[str, object]) -> str:
    rows = report["rows"]
    assert isinstance(rows, list)
    header = "| transformation | " + " | ".join(f"{r['size']} px" for r in rows) + " |"
    lines = [header, "|---|" + "---|" * len(rows)]
    for name in TRANSFORMS:
        cells = [f"{r['bit_accuracy'][name]:.3f} ({r['exact_payload_detected'][name]})" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| PSNR, mean (min) | " + " | ".join(f"{r['psnr_db']} dB ({r['psnr_min_db']})" for r in rows) + " |"
    )
    lines.append(
        "| false detections on unmarked images | "
        + " | ".join(str(r["false_positives_unmarked"]) for r in rows)
        + " |"
    )
    lines.append(
        "| embed / read ms | " + " | ".join(f"{r['embed_ms']} / {r['read_ms']}" for r in rows) + " |"
    )
    return "\n".join(lines)


def figure(path: Path, size: int = 512) -> None:
    """The README's picture: a photograph, the same marked, the difference ×20, and the marked image after
    crop 5% + half size + JPEG q75 with what `detect` read from it."""
    from PIL import ImageDraw

    original = test_images(size, 1)[0]
    payload = 0xA5C30F1E7B29
    marked = embed(original, payload)
    difference = np.asarray(marked, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    amplified = Image.fromarray(np.clip(128 + 20 * difference, 0, 255).astype(np.uint8))
    attacked = TRANSFORMS["crop 5% + resize 1/2 + JPEG q75"](marked)
    found = detect(attacked)
    panels = [original, marked, amplified, attacked.resize((size, size), Image.Resampling.NEAREST)]
    captions = [
        "original",
        f"marked, PSNR {psnr(original, marked):.1f} dB",
        "difference x20",
        "crop, half, JPEG q75: " + ("payload read" if found and found.payload == payload else "lost"),
    ]
    tile = 200
    sheet = Image.new("RGB", (tile * 4, tile + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        sheet.paste(panel.resize((tile, tile), Image.Resampling.LANCZOS), (index * tile, 24))
        draw.text((index * tile + 4, 6), caption, fill="black")
    sheet.quantize(colors=256, dither=Image.Dither.NONE).save(
        path, optimize=True
    )  # small enough for the repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,384,512,768", help="image sides, comma-separated")
    parser.add_argument("--images", type=int, default=6, help="test images per size (at most 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--figure", type=Path, help="also draw the README's picture (docs/watermark.png)")
    args = parser.parse_args(argv)
    if args.figure:
        figure(args.figure)
    report = run([int(s) for s in args.sizes.split(",")], args.images, args.seed)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
