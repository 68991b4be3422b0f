"""Datasets (folders, captions, labels, zips, bad files, limits) and the on-disk feature/latent cache."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from model import FAEPipeline
from model.data import extract_zip_safely, image_to_tensor, open_image_dataset, scan_image_folder, to_rgb
from model.errors import DatasetError
from model.latent_cache import LatentCache
from model.synthetic import write_dataset


def save_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, colour).save(path)
    return path


def test_captions_from_sidecars_and_a_manifest_which_wins(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", (255, 0, 0))
    save_png(tmp_path / "b.png", (0, 255, 0))
    save_png(tmp_path / "c.png", (0, 0, 255))
    (tmp_path / "a.txt").write_text("  a red\n square ")
    (tmp_path / "b.txt").write_text("sidecar loses")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "b.png", "caption": "from the manifest"}) + "\n"
    )
    save_png(tmp_path / ".hidden" / "x.png", (1, 2, 3))  # hidden folders are not part of the dataset
    dataset = scan_image_folder(tmp_path)
    assert [r.relpath for r in dataset.records] == ["a.png", "b.png", "c.png"]
    assert dataset.captions() == ["a red square", "from the manifest", ""]
    assert dataset.skipped == []


def test_a_manifest_caption_list_gives_caption_variants(tmp_path: Path) -> None:
    save_png(tmp_path / "apple.png", (255, 0, 0))
    save_png(tmp_path / "plain.png", (0, 255, 0))
    save_png(tmp_path / "none.png", (0, 0, 255))
    (tmp_path / "none.txt").write_text("blue square")  # an empty manifest list falls back to the sidecar
    variants = ["red apple, food & drink, noto style", " red  apple ", "red apple", "", 7]
    lines = [
        {"file": "apple.png", "caption": variants},
        {"file": "plain.png", "caption": "green square"},
        {"file": "none.png", "caption": []},
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = scan_image_folder(tmp_path)
    # duplicates (after whitespace clean-up), empty strings and non-strings are dropped; the first stays first
    assert dataset.captions() == ["red apple, food & drink, noto style", "blue square", "green square"]
    assert dataset.caption_choices() == [
        ("red apple, food & drink, noto style", "red apple"),
        ("blue square",),
        ("green square",),
    ]


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path: Path) -> None:
    save_png(tmp_path / "good.png", (10, 20, 30))
    full = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "notes.md").write_text("hello")
    dataset = scan_image_folder(tmp_path)
    assert [r.relpath for r in dataset.records] == ["good.png"]
    reasons = {s.relpath: s.reason for s in dataset.skipped}
    assert set(reasons) == {"truncated.png", "empty.jpg", "noise.png", "notes.md"}
    assert reasons["notes.md"] == "not an image"
    assert reasons["truncated.png"].startswith("corrupt image")
    report = dataset.report()
    assert report["num_images"] == 1 and report["num_skipped"] == 4


def test_labels_come_from_class_folders_or_the_manifest(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path / "folders", 9, "shapes", seed=0, size=16)
    dataset = scan_image_folder(folders)
    assert dataset.class_names == sorted({r.relpath.split("/")[0] for r in dataset.records})
    assert dataset.labels() == [dataset.class_names.index(r.relpath.split("/")[0]) for r in dataset.records]

    flat = tmp_path / "flat"
    for i in range(3):
        save_png(flat / f"{i}.png", (i, i, i))
    lines = [json.dumps({"file_name": f"{i}.png", "label": 2 - i}) for i in range(3)]
    (flat / "metadata.jsonl").write_text("\n".join(lines))
    assert scan_image_folder(flat).labels() == [2, 1, 0]
    (flat / "metadata.jsonl").unlink()
    assert (
        scan_image_folder(flat).labels() is None
    )  # no labels: class-conditional training uses the null class


def test_too_few_and_too_many_images_are_clear_errors(tmp_path: Path) -> None:
    for i in range(4):
        save_png(tmp_path / f"{i}.png", (i, 0, 0))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"4 usable images \(1 files skipped.*at least 10"):
        open_image_dataset(tmp_path, min_images=10)
    with pytest.raises(DatasetError, match="more than 3 usable images"):
        open_image_dataset(tmp_path, max_images=3)
    assert len(open_image_dataset(tmp_path, min_images=4, max_images=4)) == 4
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_dataset(tmp_path / "missing")


def test_a_zip_is_extracted_and_read_like_a_folder(tmp_path: Path) -> None:
    source = write_dataset(tmp_path / "src", 5, "brand", seed=0, size=16)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(source.iterdir()):
            bundle.write(path, f"brand/{path.name}")
        bundle.writestr("__MACOSX/brand/._brand_0000.png", b"resource fork junk")
    dataset = open_image_dataset(archive, extract_dir=tmp_path / "extracted")
    assert len(dataset) == 5 and dataset.skipped == []
    assert all(r.caption for r in dataset.records)
    assert all(r.relpath.startswith("brand/") for r in dataset.records)


@pytest.mark.parametrize("name", ["../escape.png", "/abs/path.png", "a/../../escape.png"])
def test_a_zip_with_path_traversal_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ok.png", b"x")
        bundle.writestr(name, b"x")
    with pytest.raises(DatasetError, match="unsafe path"):
        extract_zip_safely(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.png").exists()


def test_a_zip_with_a_symlink_or_too_much_data_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = 0o120777 << 16  # a symbolic link entry
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        extract_zip_safely(archive, tmp_path / "out")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("zeros.png", bytes(2_000_000))
    with pytest.raises(DatasetError, match="unpacks to more than"):
        extract_zip_safely(bomb, tmp_path / "out", max_bytes=1_000_000)
    (tmp_path / "not.zip").write_bytes(b"plain bytes")
    with pytest.raises(DatasetError, match="not a zip"):
        open_image_dataset(tmp_path / "not.zip", extract_dir=tmp_path / "x")


def test_images_are_center_cropped_and_transparency_goes_over_white() -> None:
    image = PIL.Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste(
        (255, 0, 0, 255), (10, 0, 30, 20)
    )  # an opaque red square in the middle of a transparent strip
    tensor = image_to_tensor(image, 8)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.uint8
    assert tensor[:, 4, 4].tolist() == [255, 0, 0]
    wide = image_to_tensor(PIL.Image.new("RGBA", (40, 20), (0, 0, 0, 0)), 8)
    assert int(wide.min()) == 255  # fully transparent: white, not black


def test_to_rgb_turns_upright_and_flattens_alpha_for_training_and_img2img() -> None:
    from model.img2img import prepare_input_image

    rgba = PIL.Image.new("LA", (6, 4), (0, 0))
    assert to_rgb(rgba).mode == "RGB" and np.asarray(to_rgb(rgba)).min() == 255
    upright = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    stored = upright.transpose(PIL.Image.Transpose.ROTATE_270)
    stored.getexif()[0x0112] = 8  # shown after a 90° counter-clockwise turn
    assert np.array_equal(np.asarray(to_rgb(stored)), np.asarray(upright))
    assert np.array_equal(np.asarray(prepare_input_image(stored)), np.asarray(to_rgb(stored)))
    assert torch.equal(image_to_tensor(stored, 8), image_to_tensor(upright, 8))


@pytest.fixture
def tiny_pipe() -> FAEPipeline:
    return FAEPipeline.from_preset("tiny", seed=0)


def test_latent_cache_hits_and_is_invalidated_by_data_encoder_or_compressor(
    tmp_path: Path, tiny_pipe
) -> None:
    data = write_dataset(tmp_path / "data", 6, "shapes", seed=0, size=32)
    cache = LatentCache(tmp_path / "cache")
    enc, comp, size = tiny_pipe.encoder, tiny_pipe.compressor, tiny_pipe.image_size

    first = cache.latents(scan_image_folder(data), enc, comp, size)
    again = cache.latents(scan_image_folder(data), enc, comp, size)
    assert (first.hit, again.hit) == (False, True)
    assert first.mean.shape == (6, 2, 4, 8, 8) and np.array_equal(first.mean, again.mean)
    # index 1 is the horizontal flip's posterior: it equals encoding the flipped image
    image = scan_image_folder(data).load(0, size).float()[None] / 255
    with torch.no_grad():
        flipped = comp(enc(image.flip(-1))).mean
    assert torch.allclose(torch.from_numpy(np.array(first.mean[0, 1])), flipped[0], atol=1e-5)

    features = cache.features(scan_image_folder(data), enc, size)
    assert not features.hit and cache.features(scan_image_folder(data), enc, size).hit

    save_png(next(data.rglob("*.png")), (1, 2, 3), (32, 32))  # one image changed
    changed = scan_image_folder(data)
    assert not cache.latents(changed, enc, comp, size).hit
    assert not cache.features(changed, enc, size).hit
    with torch.no_grad():
        comp.head.bias.add_(0.01)  # the compressor changed: latents miss, encoder features still hit
    assert not cache.latents(changed, enc, comp, size).hit
    assert cache.features(changed, enc, size).hit
    with torch.no_grad():
        enc.norm.bias.add_(0.01)  # the encoder changed
    assert not cache.features(changed, enc, size).hit


def test_a_failed_cache_build_leaves_no_entry(
    tmp_path: Path, tiny_pipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data", 4, "shapes", seed=0, size=32)
    dataset = scan_image_folder(data)
    cache = LatentCache(tmp_path / "cache")

    def broken(*_args: object, **_kwargs: object) -> torch.Tensor:
        raise RuntimeError("the GPU fell over")

    monkeypatch.setattr(tiny_pipe.compressor, "forward", broken)
    with pytest.raises(RuntimeError, match="fell over"):
        cache.latents(dataset, tiny_pipe.encoder, tiny_pipe.compressor, tiny_pipe.image_size)
    assert list((tmp_path / "cache").iterdir()) == []
