"""The licences and attribution of the emoji data: written into the dataset and reused by the model card."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from demo.emoji_source import SOURCES, EmojiSource

LICENSE_TEXTS = Path(__file__).resolve().parent / "licenses"

_SECTIONS = {
    "noto": """\
## Noto Emoji (style "noto")

- Artwork: {artwork}, Copyright Google LLC, <https://github.com/googlefonts/noto-emoji>.
- Licence: Apache License, Version 2.0; the full text is in `licenses/Apache-2.0.txt`
  (<https://www.apache.org/licenses/LICENSE-2.0>). The flag images Noto Emoji takes from its
  `third_party/region-flags` folder are in the public domain.
- Taken from the npm package `{spec}` (`img/google/64/`).
""",
    "twemoji": """\
## Twemoji (style "twemoji")

- Attribution: Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors
  (<https://github.com/twitter/twemoji>), version 16.0.1 of the jdecked/twemoji fork
  (<https://github.com/jdecked/twemoji>), licensed under the Creative Commons Attribution 4.0 International
  licence (CC BY 4.0, <https://creativecommons.org/licenses/by/4.0/>). The licensors do not endorse this
  project or its use of the graphics. The graphics are provided as is, without warranties.
- Taken from the npm package `{spec}` (`img/twitter/64/`).
""",
}

_HEADER = """\
# Licences of the emoji data

Images of two openly licensed emoji sets, prepared by `python -m demo.prepare_data` (fae-serve). Changes made
to every image: the transparent background composited onto white{resize}, the file renamed to
`<unified code>-<style>.png`, and a caption written from the emoji's Unicode name and category. Both sets are
redistributed under their own licences below; a model trained on them carries this notice in its model card.
"""

_FOOTER = """\
## Emoji names and categories

- From `emoji.json` of emoji-data by Cal Henderson (<https://github.com/iamcal/emoji-data>), MIT License,
  Copyright (c) 2013 Cal Henderson; the text is in `licenses/emoji-data-MIT.txt`. The names are the Unicode
  character names and the categories Unicode's emoji groups.
"""


def attribution_markdown(sources: Sequence[EmojiSource] = tuple(SOURCES.values()), size: int = 64) -> str:
    """The licence and attribution notice (Markdown) for data made from `sources` at `size` px."""
    resize = "" if size == 64 else f", resized from 64 to {size} px"
    parts = [_HEADER.format(resize=resize)]
    parts += [_SECTIONS[source.style].format(artwork=source.artwork, spec=source.spec) for source in sources]
    parts.append(_FOOTER)
    return "\n".join(parts)


def write_licenses(out_dir: Path, sources: Sequence[EmojiSource], size: int = 64) -> None:
    """LICENSES.md plus the licence texts it points to, in `out_dir`."""
    out_dir = Path(out_dir)
    (out_dir / "LICENSES.md").write_text(attribution_markdown(sources, size), encoding="utf-8")
    (out_dir / "licenses").mkdir(exist_ok=True)
    texts = ["emoji-data-MIT.txt"] + (
        ["Apache-2.0.txt"] if any(s.license == "Apache-2.0" for s in sources) else []
    )
    for name in texts:
        shutil.copyfile(LICENSE_TEXTS / name, out_dir / "licenses" / name)
