"""demo.prepare_data on fake packages: captions, the split, the written files, the licences, errors; no npm."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from demo import emoji_source
from demo.emoji_source import SOURCES, EmojiDataError, extract_package, fetch_tarball, sha512_integrity
from demo.prepare_data import (
    MARKER_FILE,
    build_caption,
    is_heldout,
    main,
    prepare,
    prepare_dataset,
    read_emoji_index,
    split_of,
)

FAKE_HELDOUT = {"1F352", "1F359"}


def test_caption_template() -> None:
    assert build_caption("RED APPLE", "Food & Drink", "noto") == "red apple, food & drink, noto style"
    assert (
        build_caption("Côte d\u2019Ivoire Flag", "Flags", "twemoji")
        == "côte d'ivoire flag, flags, twemoji style"
    )
    assert build_caption("  RUNNING   SHOE ", "Objects", "twemoji") == "running shoe, objects, twemoji style"


def test_split_is_a_fixed_function_of_the_code() -> None:
    # Pinned: changing the rule or its salt would silently change the evaluation set.
    assert not is_heldout("1F34E")  # red apple: a training emoji (the README's example prompt)
    assert is_heldout("1F431") and is_heldout("1f431")  # cat face, whatever the case of the code
    assert split_of("1F352") == "heldout" and split_of("1F340") == "train"
    share = np.mean([is_heldout(f"{code:X}") for code in range(0x1F000, 0x1F000 + 5000)])
    assert 0.08 < share < 0.12
    assert is_heldout("1F431", fraction=0.0) is False


def test_manifest_images_and_sidecars(fake_dataset: Path) -> None:
    lines = (fake_dataset / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    # 32 emoji in both styles + one more noto-only emoji; the Component entry is skipped.
    assert len(entries) == 65
    for entry in entries:
        assert {"file", "caption", "name", "category", "style", "split"} <= entry.keys()
        assert entry["file"].startswith(entry["split"] + "/")
        assert entry["caption"] == f"{entry['name']}, {entry['category']}, {entry['style']} style"
        sidecar = (fake_dataset / entry["file"]).with_suffix(".txt")
        assert sidecar.read_text(encoding="utf-8").strip() == entry["caption"]
        assert entry["split"] == ("heldout" if entry["unified"] in FAKE_HELDOUT else "train")
    heldout = {(e["unified"], e["style"]) for e in entries if e["split"] == "heldout"}
    assert heldout == {(code, style) for code in FAKE_HELDOUT for style in ("noto", "twemoji")}
    assert not any(e["category"] == "component" for e in entries)
    apple_like = next(e for e in entries if e["unified"] == "1F340" and e["style"] == "noto")
    assert apple_like["caption"] == "test emoji number 0, food & drink, noto style"
    with PIL.Image.open(fake_dataset / apple_like["file"]) as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited onto white
        assert image.getpixel((32, 32)) != (255, 255, 255)


def test_each_split_carries_caption_variants_the_training_loader_reads(fake_dataset: Path) -> None:
    from model.data import scan_image_folder

    dataset = scan_image_folder(fake_dataset / "train")
    apple_like = next(r for r in dataset.records if r.relpath == "1f340-noto.png")
    assert (apple_like.caption, *apple_like.caption_variants) == (
        "test emoji number 0, food & drink, noto style",  # the sidecar's caption stays the first
        "test emoji number 0",
        "test emoji number 0, noto style",
        "test emoji number 0, food & drink",
    )
    assert all(len(choices) == 4 for choices in dataset.caption_choices())
    heldout = scan_image_folder(fake_dataset / "heldout")
    assert len(heldout) == 2 * len(FAKE_HELDOUT) and all(r.caption_variants for r in heldout.records)


def test_size_option_resizes(tmp_path: Path, fake_packages: dict[str, Path]) -> None:
    summary = prepare_dataset({"noto": fake_packages["noto"]}, tmp_path / "out", size=32)
    assert summary["images"] == {"noto": {"train": 31, "heldout": 2}}
    assert summary["skipped"]["noto"] == {"skin-tone variants": 1, "category Component": 1}
    with PIL.Image.open(tmp_path / "out" / "train" / "1f340-noto.png") as image:
        assert image.size == (32, 32)


def test_package_without_what_is_expected(tmp_path: Path, fake_packages: dict[str, Path]) -> None:
    noto = fake_packages["noto"]
    with pytest.raises(EmojiDataError, match=r"emoji\.json is missing"):
        read_emoji_index(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "emoji.json").write_text('[{"name": "X"}]')
    with pytest.raises(EmojiDataError, match="lacks unified"):
        read_emoji_index(tmp_path / "bad")
    with pytest.raises(EmojiDataError, match="no img/twitter/64"):
        prepare_dataset({"twemoji": noto}, tmp_path / "out1")
    for png in list((noto / "img" / "google" / "64").glob("*.png"))[:5]:
        png.unlink()
    with pytest.raises(EmojiDataError, match="are missing from"):
        prepare_dataset({"noto": noto}, tmp_path / "out2")


def _tarball(package_dir: Path, path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(package_dir, arcname="package")
        for info, data in extra:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_extract_package_takes_only_the_needed_regular_files(
    tmp_path: Path, fake_packages: dict[str, Path]
) -> None:
    link = tarfile.TarInfo("package/img/google/64/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    other = tarfile.TarInfo("package/img/google/sheets/64.png")
    other.size = 3
    tarball = _tarball(fake_packages["noto"], tmp_path / "pkg.tgz", [(link, None), (other, b"abc")])
    package = extract_package(tarball, tmp_path / "x", SOURCES["noto"])
    assert (package / "emoji.json").is_file()
    assert (
        len(list((package / "img" / "google" / "64").glob("*.png"))) == 34
    )  # 32 + the Component entry + a noto-only one
    assert not (package / "img" / "google" / "64" / "link.png").exists()
    assert not (package / "img" / "google" / "sheets").exists()
    with pytest.raises(EmojiDataError, match="no img/twitter/64"):
        extract_package(tarball, tmp_path / "y", SOURCES["twemoji"])
    escape = tarfile.TarInfo("package/img/google/64/../../../../../escaped.png")
    escape.size = 3
    hostile = _tarball(fake_packages["noto"], tmp_path / "hostile.tgz", [(escape, b"abc")])
    with pytest.raises(EmojiDataError, match="outside its package"):
        extract_package(hostile, tmp_path / "h", SOURCES["noto"])
    assert not (tmp_path / "escaped.png").exists()
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(EmojiDataError, match="not a readable npm tarball"):
        extract_package(tmp_path / "junk.tgz", tmp_path / "z", SOURCES["noto"])


def _pin_fake_tarballs(
    tmp_path: Path, fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Tarballs of the fake packages in a cache folder, pinned as the sources' integrity; npm made unavailable."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for style, package_dir in fake_packages.items():
        tarball = _tarball(package_dir, cache / SOURCES[style].tarball_name)
        monkeypatch.setitem(
            SOURCES, style, dataclasses.replace(SOURCES[style], integrity=sha512_integrity(tarball))
        )
    monkeypatch.setattr(emoji_source.shutil, "which", lambda name: None)
    return cache


def test_fetch_reuses_a_verified_tarball_and_needs_npm_otherwise(
    tmp_path: Path, fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _pin_fake_tarballs(tmp_path, fake_packages, monkeypatch)
    fetched = fetch_tarball(SOURCES["noto"], tmp_path / "dest", reuse_dirs=(cache,))
    assert fetched.read_bytes() == (cache / SOURCES["noto"].tarball_name).read_bytes()
    assert fetch_tarball(SOURCES["noto"], tmp_path / "dest") == fetched  # already there
    (cache / SOURCES["twemoji"].tarball_name).write_bytes(b"truncated")  # fails the integrity check
    with pytest.raises(EmojiDataError, match="npm is not installed"):
        fetch_tarball(SOURCES["twemoji"], tmp_path / "dest", reuse_dirs=(cache,))


def test_prepare_writes_the_folder_atomically_with_licences(
    tmp_path: Path,
    fake_packages: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    cache = _pin_fake_tarballs(tmp_path, fake_packages, monkeypatch)
    out = tmp_path / "emoji"
    (out / "downloads").mkdir(parents=True)
    (out / MARKER_FILE).write_text("{}")  # a previous run's output: may be replaced
    for tarball in cache.iterdir():
        tarball.rename(out / "downloads" / tarball.name)
    summary = prepare(out)
    assert summary["emoji"] == {"train": 31, "heldout": 2}
    assert summary["images"]["twemoji"] == {"train": 30, "heldout": 2}
    record = json.loads((out / MARKER_FILE).read_text())
    assert record["sources"]["noto"]["license"] == "Apache-2.0" and record["caption_template"]
    licences = (out / "LICENSES.md").read_text(encoding="utf-8")
    assert "Apache License, Version 2.0" in licences and "CC BY 4.0" in licences
    assert "Twitter, Inc and other contributors" in licences
    assert "Apache License" in (out / "licenses" / "Apache-2.0.txt").read_text()
    assert (out / "licenses" / "emoji-data-MIT.txt").is_file()
    assert sorted(p.name for p in (out / "downloads").iterdir()) == sorted(
        s.tarball_name for s in SOURCES.values()
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    assert main(["--out", str(out), "--styles", "noto"]) == 0  # a rerun replaces it, reusing the download
    assert "noto" in capsys.readouterr().out
    assert {json.loads(line)["style"] for line in (out / "manifest.jsonl").read_text().splitlines()} == {
        "noto"
    }


def test_prepare_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--out", str(out)]) == 1
    assert "is not an emoji dataset made by this script" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--styles", "apple"])
