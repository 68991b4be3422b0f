"""A fake pair of emoji-datasource packages (emoji.json + a few drawn 64 px RGBA PNGs), never the npm registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import pytest

# 32 emoji; with the split's salt, 1F352 and 1F359 are held out, the other 30 are training emoji.
FAKE_CODES = [f"1F{0x340 + i:03X}" for i in range(32)]
FAKE_HELDOUT = {"1F352", "1F359"}
CATEGORIES = ["Food & Drink", "Animals & Nature", "Objects", "Symbols"]
IMAGE_SETS = ("google", "twitter")


def _draw(index: int, image_set: str) -> PIL.Image.Image:
    """A coloured shape on a transparent background: the shape follows the category, the colour the emoji."""
    image = PIL.Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = PIL.ImageDraw.Draw(image)
    colour = ((index * 67) % 256, (index * 131) % 256, (index * 29 + 80) % 256, 255)
    box = (8, 8, 56, 56) if image_set == "google" else (12, 12, 52, 52)
    shape = index % len(CATEGORIES)
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    elif shape == 2:
        draw.polygon([(32, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    else:
        draw.line([(box[0], box[1]), (box[2], box[3])], fill=colour, width=8)
    return image


def _entry(index: int, code: str) -> dict:
    return {
        "name": f"TEST EMOJI NUMBER {index}",
        "unified": code,
        "image": f"{code.lower()}.png",
        "short_name": f"test_{index}",
        "category": CATEGORIES[index % len(CATEGORIES)],
        "subcategory": "test-things",
        "has_img_google": True,
        "has_img_twitter": True,
    }


def write_fake_package(root: Path, image_set: str) -> Path:
    entries = [_entry(i, code) for i, code in enumerate(FAKE_CODES)]
    entries[0]["skin_variations"] = {"1F3FB": {"unified": f"{FAKE_CODES[0]}-1F3FB", "image": "x.png"}}
    # Skipped: a Component entry, and one the twitter set has no image of.
    entries.append(
        {**_entry(90, "1F3FB"), "category": "Component", "name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2"}
    )
    entries.append({**_entry(91, "1F9FF"), "has_img_twitter": False})
    image_dir = root / "img" / image_set / "64"
    image_dir.mkdir(parents=True)
    for index, entry in enumerate(entries):
        if entry.get(f"has_img_{image_set}"):
            _draw(index, image_set).save(image_dir / entry["image"])
    (root / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    (root / "LICENSE").write_text("MIT (test)\n")
    return root


@pytest.fixture
def fake_packages(tmp_path: Path) -> dict[str, Path]:
    """Style -> extracted package directory, as `prepare_dataset` takes them."""
    return {
        "noto": write_fake_package(tmp_path / "google" / "package", "google"),
        "twemoji": write_fake_package(tmp_path / "twitter" / "package", "twitter"),
    }


@pytest.fixture
def fake_dataset(tmp_path: Path, fake_packages: dict[str, Path]) -> Path:
    from demo.prepare_data import prepare_dataset

    out = tmp_path / "dataset"
    prepare_dataset(fake_packages, out, size=64)
    return out


@pytest.fixture
def make_fake_package() -> Callable[[Path, str], Path]:
    return write_fake_package
