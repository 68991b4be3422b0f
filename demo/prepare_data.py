"""Prepare the emoji training set of the demo model: `python -m demo.prepare_data --out var/data/emoji`.

Fetches two pinned npm packages with `npm pack` (the only network use), takes each emoji's 64 px PNG in both
styles, composites it onto white and writes (see demo/README.md for the format):

    OUT/train/<unified>-<style>.png + .txt    caption sidecar, e.g. "red apple, food & drink, noto style"
    OUT/train/captions.jsonl                  caption variants per image, which training draws among:
                                              the full caption, "red apple", "red apple, noto style",
                                              "red apple, food & drink"
    OUT/heldout/<unified>-<style>.png + .txt  the evaluation split (about 10% of the emoji, both styles)
    OUT/manifest.jsonl                        one line per image: file, caption, name, category, style, split, ...
    OUT/dataset.json                          sources, pinned versions, counts, caption template, split rule
    OUT/LICENSES.md, OUT/licenses/            the artwork licences and the attribution they require
    OUT/downloads/*.tgz                       the npm tarballs, reused (after an integrity check) by a rerun

The whole folder is built under a temporary name and moved into place, so it only ever appears complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from demo.attribution import write_licenses
from demo.emoji_source import IMAGE_SIZE_DIR, SOURCES, EmojiDataError, extract_package, fetch_tarball

# Lower-cased Unicode name, lower-cased top-level category, style word: "red apple, food & drink, noto style".
CAPTION_TEMPLATE = "{name}, {category}, {style} style"
# An emoji is held out when the salted hash of its unified code falls below this fraction: stable across
# package versions and orderings, and both styles of an emoji always land in the same split.
HELDOUT_FRACTION = 0.10
SPLIT_SALT = "fae-demo-emoji-split-v1"
SPLITS = ("train", "heldout")
# "Component" holds the bare skin-tone swatches and hair pieces, not emoji one would ask for.
SKIPPED_CATEGORIES = frozenset({"Component"})
# A few missing images are listed and skipped; more means the package is not what this script expects.
MAX_MISSING_FRACTION = 0.01
DATASET_FORMAT = 1
MARKER_FILE = "dataset.json"


def normalize_text(text: str) -> str:
    """Lower case, NFC, typographic apostrophes made plain, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.lower().split())


def build_caption(name: str, category: str, style: str) -> str:
    return CAPTION_TEMPLATE.format(
        name=normalize_text(name), category=normalize_text(category), style=normalize_text(style)
    )


def caption_variants(name: str, category: str, style: str) -> list[str]:
    """The full caption first, then the shorter ones a user types ("red apple"); training draws among them."""
    name, category, style = (normalize_text(v) for v in (name, category, style))
    return [build_caption(name, category, style), name, f"{name}, {style} style", f"{name}, {category}"]


def is_heldout(unified: str, fraction: float = HELDOUT_FRACTION) -> bool:
    digest = hashlib.sha256(f"{SPLIT_SALT}:{unified.upper()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_of(unified: str, fraction: float = HELDOUT_FRACTION) -> str:
    return "heldout" if is_heldout(unified, fraction) else "train"


@dataclass(frozen=True)
class Emoji:
    unified: str
    name: str
    short_name: str
    category: str
    subcategory: str
    image: str  # file name in img/<set>/64/
    has_image: dict[str, bool]  # per image set ("google", "twitter")
    skin_variants: int


def read_emoji_index(package_dir: Path) -> list[Emoji]:
    """The emoji of a package's emoji.json (skin-tone variants are nested in their base emoji, not listed)."""
    path = Path(package_dir) / "emoji.json"
    if not path.is_file():
        raise EmojiDataError(f"{path} is missing: not an emoji-datasource package directory")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EmojiDataError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(entries, list) or not entries:
        raise EmojiDataError(f"{path} should hold a non-empty JSON list of emoji")
    emoji = []
    for index, entry in enumerate(entries):
        try:
            fields = {
                key: entry[key]
                for key in ("unified", "name", "short_name", "category", "subcategory", "image")
            }
            if not all(isinstance(value, str) and value for value in fields.values()):
                raise TypeError("a field is empty or not a string")
        except (KeyError, TypeError) as exc:
            raise EmojiDataError(
                f"{path}: entry {index} lacks unified/name/short_name/category/subcategory/image ({exc!r})"
            ) from exc
        has_image = {
            key[len("has_img_") :]: bool(value) for key, value in entry.items() if key.startswith("has_img_")
        }
        emoji.append(
            Emoji(**fields, has_image=has_image, skin_variants=len(entry.get("skin_variations") or {}))
        )
    return sorted(emoji, key=lambda e: e.unified)


def composite_on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    rgba = image.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def prepare_dataset(package_dirs: Mapping[str, Path], out_dir: Path, size: int = 64) -> dict[str, Any]:
    """Write images, caption sidecars and manifest.jsonl for each style's extracted package into `out_dir`.

    `package_dirs` maps a style of `SOURCES` ("noto", "twemoji") to its package directory (holding emoji.json
    and img/<set>/64/). Returns the counts (also what dataset.json records).
    """
    out_dir = Path(out_dir)
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, Any]] = []
    skipped: dict[str, Counter[str]] = {}
    missing: dict[str, list[str]] = {}
    for style, package_dir in package_dirs.items():
        source = SOURCES[style]
        image_dir = Path(package_dir) / "img" / source.image_set / IMAGE_SIZE_DIR
        if not image_dir.is_dir():
            raise EmojiDataError(
                f"{package_dir} has no img/{source.image_set}/{IMAGE_SIZE_DIR}/ folder of emoji images"
            )
        skipped[style], missing[style] = Counter(), []
        emoji = read_emoji_index(Path(package_dir))
        for item in emoji:
            skipped[style]["skin-tone variants"] += item.skin_variants
            if item.category in SKIPPED_CATEGORIES:
                skipped[style][f"category {item.category}"] += 1
                continue
            if not item.has_image.get(source.image_set, False):
                skipped[style][f"no {source.image_set} image"] += 1
                continue
            src = image_dir / item.image
            if not src.is_file():
                missing[style].append(item.image)
                continue
            manifest.append(_write_image(item, style, src, out_dir, size))
        if len(missing[style]) > MAX_MISSING_FRACTION * len(emoji):
            raise EmojiDataError(
                f"{len(missing[style])} of {len(emoji)} {style} images listed in emoji.json are missing from "
                f"{image_dir} (e.g. {', '.join(missing[style][:3])}): the package is not what this script expects"
            )
    if not manifest:
        raise EmojiDataError("no emoji images were found in the packages")
    lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in manifest)
    (out_dir / "manifest.jsonl").write_text(lines, encoding="utf-8")
    for split in SPLITS:  # the training loader's manifest: each image's caption variants (model/data.py)
        variants = [
            {"file": Path(e["file"]).name, "caption": caption_variants(e["name"], e["category"], e["style"])}
            for e in manifest
            if e["split"] == split
        ]
        text = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in variants)
        (out_dir / split / "captions.jsonl").write_text(text, encoding="utf-8")
    return _summary(manifest, skipped, missing, size)


def _write_image(item: Emoji, style: str, src: Path, out_dir: Path, size: int) -> dict[str, Any]:
    split = split_of(item.unified)
    stem = f"{split}/{item.unified.lower()}-{style}"
    try:
        with PIL.Image.open(src) as image:
            rgb = composite_on_white(image)
    except (OSError, ValueError) as exc:
        raise EmojiDataError(f"{src} is not a readable image ({exc})") from exc
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), PIL.Image.Resampling.LANCZOS)
    rgb.save(out_dir / f"{stem}.png", format="PNG")
    caption = build_caption(item.name, item.category, style)
    (out_dir / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return {
        "file": f"{stem}.png",
        "caption": caption,
        "name": normalize_text(item.name),
        "category": normalize_text(item.category),
        "style": style,
        "split": split,
        "unified": item.unified,
        "short_name": item.short_name,
        "subcategory": item.subcategory,
    }


def _summary(
    manifest: list[dict[str, Any]], skipped: dict[str, Counter[str]], missing: dict[str, list[str]], size: int
) -> dict[str, Any]:
    images = Counter((entry["style"], entry["split"]) for entry in manifest)
    emoji = {split: len({e["unified"] for e in manifest if e["split"] == split}) for split in SPLITS}
    return {
        "images": {style: {split: images[style, split] for split in SPLITS} for style in skipped},
        "emoji": emoji,
        "categories": dict(
            sorted(Counter(e["category"] for e in manifest if e["style"] == manifest[0]["style"]).items())
        ),
        "skipped": {style: dict(counts) for style, counts in skipped.items()},
        "missing_images": {style: names for style, names in missing.items() if names},
        "size": size,
    }


def prepare(out: Path, size: int = 64, styles: tuple[str, ...] = tuple(SOURCES)) -> dict[str, Any]:
    """Fetch (or reuse) the tarballs, extract them and write the dataset to `out` atomically."""
    from model.io import write_directory_atomically

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EmojiDataError(f"{out} is a file: --out must name a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER_FILE).is_file():
        raise EmojiDataError(
            f"{out} exists and is not an emoji dataset made by this script: choose another --out"
        )
    summary: dict[str, Any] = {}

    def write(tmp: str) -> None:
        root = Path(tmp)
        root.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        started = time.monotonic()
        tarballs = {
            style: fetch_tarball(SOURCES[style], root / "downloads", reuse_dirs=(out / "downloads",))
            for style in styles
        }
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=root) as work:
            package_dirs = {
                style: extract_package(tarball, Path(work) / style, SOURCES[style])
                for style, tarball in tarballs.items()
            }
            summary.update(prepare_dataset(package_dirs, root, size))
        write_licenses(root, [SOURCES[style] for style in styles], size)
        summary["seconds"] = round(time.monotonic() - started, 1)
        record = {
            "format": DATASET_FORMAT,
            "caption_template": CAPTION_TEMPLATE,
            "split": {
                "rule": "sha256(salt:UNIFIED) < fraction",
                "salt": SPLIT_SALT,
                "fraction": HELDOUT_FRACTION,
            },
            "sources": {
                style: {
                    "package": SOURCES[style].package,
                    "version": SOURCES[style].version,
                    "integrity": SOURCES[style].integrity,
                    "artwork": SOURCES[style].artwork,
                    "license": SOURCES[style].license,
                }
                for style in styles
            },
            **summary,
        }
        (root / MARKER_FILE).write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    write_directory_atomically(out, write, overwrite=True)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [f"{'style':10s} {'train':>7s} {'heldout':>8s}"]
    for style, counts in summary["images"].items():
        lines.append(f"{style:10s} {counts['train']:7d} {counts['heldout']:8d}")
    emoji = summary["emoji"]
    lines.append(f"emoji: {emoji['train']} train, {emoji['heldout']} held out; images {summary['size']} px")
    for style, counts in summary["skipped"].items():
        lines.append(f"skipped ({style}): " + ", ".join(f"{n} {why}" for why, n in counts.items()))
    for style, names in summary.get("missing_images", {}).items():
        lines.append(f"missing ({style}): {len(names)} images, e.g. {', '.join(names[:5])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.prepare_data", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="dataset folder to write (e.g. var/data/emoji)"
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64: the source size)")
    parser.add_argument(
        "--styles",
        default=",".join(SOURCES),
        help=f"comma-separated styles to include ({', '.join(SOURCES)})",
    )
    args = parser.parse_args(argv)
    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    if not styles or any(style not in SOURCES for style in styles):
        parser.error(f"--styles must name some of {', '.join(SOURCES)}; got {args.styles!r}")
    if not 16 <= args.size <= 512:
        parser.error(f"--size must be from 16 to 512 pixels; got {args.size}")
    try:
        summary = prepare(args.out, args.size, styles)
    except EmojiDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {args.out} in {summary['seconds']} s (train on {args.out / 'train'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
