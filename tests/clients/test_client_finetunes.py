"""Fine-tunes through the client: uploads with progress (a directory, a zip), the trained adapter used, listed,
downloaded and deleted, against the real embedded server and its in-process worker."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from fae_client import Adapter, FAEClient, NotFoundError, UnprocessableEntityError

FAST = {"steps": 2, "rank": 2, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def brand_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 captioned brand images, as the model's fine-tune tests use."""
    from model.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("brand") / "data", 12, "brand", seed=1, size=32)


@pytest.fixture
def fae(live_server) -> FAEClient:
    with FAEClient(live_server.base_url, live_server.key) as client:
        yield client


def test_finetune_from_a_directory_reports_progress_and_trains_a_usable_adapter(
    fae: FAEClient, brand_dir: Path
) -> None:
    calls: list[tuple[int, int]] = []
    job = fae.finetunes.create(brand_dir, name="brand", **FAST, progress=lambda s, t: calls.append((s, t)))
    assert job.kind == "finetune" and job.request["dataset_images"] == 12
    total = calls[-1][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total) and total > 12 * 100
    assert [sent for sent, _ in calls] == sorted(sent for sent, _ in calls)  # only grows
    done = fae.finetunes.wait(job.id, timeout=120, poll_interval=0.2)
    assert done.succeeded, done.error
    assert done.adapter_id and fae.finetunes.get(job.id).adapter_id == done.adapter_id
    assert job.id in {j.id for j in fae.finetunes.list(limit=20).data}
    adapters = fae.adapters.list()
    assert all(isinstance(a, Adapter) for a in adapters)
    (adapter,) = [a for a in adapters if a.id == done.adapter_id]
    assert adapter.model == "tiny" and adapter.name == "brand" and adapter.rank == 2
    tuned = fae.generate(class_label=1, steps=2, adapter=adapter.id, wait=True)
    assert tuned.succeeded and fae.images(tuned)
    fae.adapters.delete(adapter.id)
    assert adapter.id not in {a.id for a in fae.adapters.list()}
    with pytest.raises(UnprocessableEntityError):  # generate refuses an adapter that is gone
        fae.generate(class_label=1, steps=2, adapter=adapter.id)


def test_finetune_from_a_zip_path_and_from_bytes(fae: FAEClient, brand_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "brand.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(brand_dir.iterdir()):
            zipped.write(path, f"set/{path.name}")
    from_zip = fae.finetunes.create(archive, steps=1, rank=1)
    assert from_zip.request["dataset_images"] == 12
    pairs = [(p.name, p.read_bytes()) for p in sorted(brand_dir.glob("*.png"))]
    from_bytes = fae.finetunes.create(pairs, steps=1, rank=1)
    assert from_bytes.request["dataset_images"] == 12
    for job in (from_zip, from_bytes):
        assert fae.finetunes.wait(job.id, timeout=120, poll_interval=0.2).succeeded


def test_a_bad_dataset_is_a_typed_error(fae: FAEClient, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("captions, but no image")
    with pytest.raises(UnprocessableEntityError) as raised:
        fae.finetunes.create([notes], steps=1)
    assert raised.value.detail and raised.value.request_id
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):  # refused before anything is sent
        fae.finetunes.create(empty, steps=1)


def test_finetune_idempotency_key_returns_the_same_job(fae: FAEClient, brand_dir: Path) -> None:
    """`Idempotency-Key` on `/v1/finetunes` (issue 15 item 5)."""
    first = fae.finetunes.create(brand_dir, steps=1, rank=1, idempotency_key="client-ft-1")
    again = fae.finetunes.create(brand_dir, steps=1, rank=1, idempotency_key="client-ft-1")
    assert again.id == first.id
    fae.finetunes.wait(first.id, timeout=120, poll_interval=0.2)


def test_too_few_images_are_refused_at_once(fae: FAEClient, brand_dir: Path) -> None:
    """Fine-tune admission (issue 15 item 5): 2 images answer 422 at submission."""
    with pytest.raises(UnprocessableEntityError):
        fae.finetunes.create(sorted(brand_dir.glob("*.png"))[:2], steps=1)


def test_adapter_get_and_download_in_peft_format(fae: FAEClient, brand_dir: Path) -> None:
    """`GET /v1/adapters/{id}` and `/download` (issue 15 item 10)."""
    job = fae.finetunes.wait(fae.finetunes.create(brand_dir, **FAST).id, timeout=120, poll_interval=0.2)
    assert job.succeeded and job.adapter_id
    adapter = fae.adapters.get(job.adapter_id)
    assert adapter.id == job.adapter_id and adapter.rank == 2
    with zipfile.ZipFile(io.BytesIO(fae.adapters.download(job.adapter_id))) as zipped:
        config = json.loads(zipped.read("adapter_config.json"))
        assert config["peft_type"] == "LORA" and config["r"] == 2 and config["target_modules"]
        assert "adapter_model.safetensors" in zipped.namelist()
    fae.adapters.delete(job.adapter_id)
    with pytest.raises(NotFoundError):
        fae.adapters.get(job.adapter_id)
