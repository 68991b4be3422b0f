"""Reading model facts from pipeline folders' JSON, leniently."""

from __future__ import annotations

import json
from pathlib import Path

from core.settings import Settings
from service.catalog import ModelCatalog, describe_model, describe_models


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_class_and_text_models_are_described(model_dirs) -> None:
    settings = Settings().override(
        models=f"cls={model_dirs['cls']},txt={model_dirs['txt']}", default_model="txt"
    )
    cls, txt = describe_models(settings)
    assert (cls.condition_type, cls.num_classes, cls.image_size, cls.default) == ("class", 10, 32, False)
    assert (txt.condition_type, txt.num_classes, txt.default) == ("text", None, True)
    assert "path" not in cls.public()


def test_explicit_keys_win_and_missing_keys_stay_unknown(tmp_path: Path) -> None:
    write(tmp_path / "a" / "model_index.json", {"sample_size": 64})
    write(tmp_path / "a" / "generator" / "config.json", {"condition_type": "text", "num_classes": 5})
    explicit = describe_model("a", tmp_path / "a")
    assert (explicit.condition_type, explicit.num_classes, explicit.image_size) == ("text", None, 64)
    write(tmp_path / "b" / "model_index.json", {})
    bare = describe_model("b", tmp_path / "b")
    assert (bare.condition_type, bare.num_classes, bare.image_size) == (None, None, None)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model_index.json").write_text("{broken")
    assert describe_model("c", tmp_path / "c").condition_type is None


def test_catalog_finds_models_under_data_dir_and_rereads_on_a_miss(tmp_path: Path, model_dirs) -> None:
    settings = Settings().override(data_dir=tmp_path)
    catalog = ModelCatalog(settings, refresh_s=3600)
    assert catalog.all() == [] and catalog.resolve(None) is None
    write(tmp_path / "models" / "tiny" / "model_index.json", {})
    write(
        tmp_path / "models" / "tiny" / "generator" / "config.json",
        {"_class_name": "LightningDiT", "num_classes": 3},
    )
    found = catalog.resolve("tiny")
    assert found is not None and found.num_classes == 3 and found.default
    assert catalog.resolve(None).name == "tiny"


def test_a_pull_in_progress_or_a_replaced_model_is_never_on_offer(tmp_path: Path) -> None:
    """`fae models pull` stages into `.NAME.partial-*` and keeps a replaced model as `.NAME.old-*` beside the
    models: neither is listed nor requestable (a half-written model must never be served)."""
    for folder in ("tiny", ".tiny.partial-abc", ".tiny.old-123"):
        write(tmp_path / "models" / folder / "model_index.json", {})
    catalog = ModelCatalog(Settings().override(data_dir=tmp_path), refresh_s=3600)
    assert [model.name for model in catalog.all()] == ["tiny"]
    assert catalog.resolve(".tiny.partial-abc") is None
