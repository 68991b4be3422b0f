"""Tar shards and the streamed feature source: `fae pack-shards`, then `fae train` on the shards with the
encoder online, which trains the same model as the feature cache does (same seed, same losses), and resumes
from the shard and offset saved in its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fae.cli import main
from model.data import scan_image_folder
from model.errors import DatasetError, InvalidInputError, TrainingCanceled
from model.shards import is_sharded, open_sharded_dataset, open_training_dataset
from model.synthetic import write_dataset
from model.training.config import TrainConfig
from model.training.feature_source import ShardOrder, choose_feature_source
from model.training.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("stream") / "images", 22, "shapes", seed=5, size=32)


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    assert main(["pack-shards", "--images", str(folder), "--out", str(out), "--shard-size", "5"]) == 0
    return out


def test_pack_keeps_images_captions_and_labels(folder: Path, shards: Path) -> None:
    packed, original = open_sharded_dataset(shards), scan_image_folder(folder)
    assert packed.shard_sizes == [5, 5, 5, 5, 2]
    assert packed.fingerprint() == original.fingerprint()  # the cache entries are shared
    assert packed.labels() == original.labels() and packed.class_names == original.class_names
    assert packed.captions() == original.captions()
    first = torch.cat(list(packed.batches(32, 8)))
    assert torch.equal(first, torch.stack([original.load(i, 32) for i in range(len(original))]))
    assert type(open_training_dataset(shards)).__name__ == "ShardedDataset"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda index: index.pop("images"), "missing key 'images'"),
        (lambda index: index["shards"][0].pop("count"), "missing key 'count'"),
        (lambda index: index["shards"].__setitem__(0, "shard-000000.tar"), "string indices"),
        (lambda index: index["shards"][0].__setitem__("count", "five"), "non-negative integer 'count'"),
        (lambda index: index.__setitem__("images", {"a": 1}), "must be lists"),
        (lambda index: index["images"][0].pop("sha256"), "missing key 'sha256'"),
        (lambda index: index["images"][0].__setitem__("captions", "a circle"), "list of strings"),
        (lambda index: index["images"][0].__setitem__("label", "circle"), "integer or null"),
        (lambda index: index.__setitem__("class_names", 3), "class_names"),
    ],
)
def test_a_malformed_index_is_a_dataset_error_naming_the_file(
    shards: Path, tmp_path: Path, change, message: str
) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for path in shards.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    index = json.loads((copy / "index.json").read_text())
    change(index)
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match=rf"index\.json is not a valid .*{message}") as caught:
        open_sharded_dataset(copy)
    assert str(copy / "index.json") in str(caught.value)
    (copy / "index.json").write_text("[1, 2]")  # JSON, but not an object
    assert not is_sharded(copy)
    with pytest.raises(DatasetError, match="is not a fae-shards/1 index"):
        open_sharded_dataset(copy)


def test_shard_order_covers_every_item_once_per_epoch() -> None:
    order = ShardOrder([3, 1, 4], batch_size=4, seed=0, task="ia")
    epoch = torch.cat([order.indices(step) for step in range(4)])  # 16 items = one epoch
    assert sorted(epoch.tolist()) == list(range(16))
    for number in (0, 5, 15, 16, 37):
        assert order.item_number(order.position(number)) == number


def _config(source: str, **extra: object) -> TrainConfig:
    values = dict(steps=8, recon_steps=0, batch_size=6, learning_rate=2e-3, checkpoint_every=4, seed=3)
    values.update(extra)
    return TrainConfig(feature_source=source, feature_cache_dtype="float32", **values)


def _train(shards: Path, out: Path, config: TrainConfig, **kwargs: object) -> dict:
    return train(
        data=shards, out_dir=out, preset="tiny", stage="ia", config=config, show_progress=False, **kwargs
    )


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((model_dir / "compressor").glob("*.safetensors")))


def test_streamed_and_cached_paths_train_the_same_model(shards: Path, tmp_path: Path) -> None:
    losses: dict[str, list[float]] = {"cache": [], "stream": []}
    reports = {
        source: _train(
            shards,
            tmp_path / source,
            _config(source),
            progress_callback=lambda source=source, **kw: losses[source].append(kw["loss"]),
        )
        for source in losses
    }
    assert reports["cache"]["stages"]["ia"]["feature_source"] == "cache"
    assert reports["stream"]["stages"]["ia"]["feature_source"] == "stream"
    # the same batches in the same order, the same float32 features: the same losses, step by step
    assert len(losses["cache"]) == 8 and losses["stream"] == losses["cache"]
    a, b = _weights(tmp_path / "cache"), _weights(tmp_path / "stream")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_streamed_run_resumes_at_the_saved_shard_and_offset(shards: Path, tmp_path: Path) -> None:
    whole = _train(shards, tmp_path / "whole", _config("stream"))
    steps_run = []

    def cancel_after_six() -> bool:
        steps_run.append(1)
        return len(steps_run) == 6

    with pytest.raises(TrainingCanceled):
        _train(shards, tmp_path / "resumed", _config("stream"), cancel_check=cancel_after_six)
    state = tmp_path / "resumed.work" / "checkpoints" / "ia" / "step-000000004" / "state.pt"
    checkpoint = torch.load(state, weights_only=False)
    text = json.dumps(checkpoint, default=str)
    assert "stream_position" in text  # epoch, shard rank and offset after step 4
    resumed = _train(shards, tmp_path / "resumed", _config("stream"), resume=True)
    assert resumed["stages"]["ia"]["resumed_from_step"] == 4
    assert resumed["stages"]["ia"]["final_loss"] == whole["stages"]["ia"]["final_loss"]
    for name, tensor in _weights(tmp_path / "whole").items():  # as if never interrupted
        assert torch.equal(tensor, _weights(tmp_path / "resumed")[name]), name


def test_feature_source_choice() -> None:
    assert choose_feature_source("auto", sharded=True, cache_bytes=3 * 10**9, budget_gb=2) == "stream"
    assert choose_feature_source("auto", sharded=True, cache_bytes=10**9, budget_gb=2) == "cache"
    assert choose_feature_source("auto", sharded=False, cache_bytes=10**12, budget_gb=2) == "cache"
    with pytest.raises(InvalidInputError, match="pack-shards"):
        choose_feature_source("stream", sharded=False, cache_bytes=0, budget_gb=2)


def test_train_cli_streams_shards_and_runs_every_stage(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    argv = ["train", "--preset", "tiny", "--data", str(shards), "--out", str(out), "--steps", "3"]
    argv += ["--batch-size", "4", "--feature-source", "stream", "--json"]
    assert main(argv) == 0
    assert (out / "model_index.json").is_file()
