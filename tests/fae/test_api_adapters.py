"""Adapters users can take away, through the real embedded server: one trained by `POST /v1/finetunes` is
read with `GET /v1/adapters/{id}`, downloaded in peft's format, loaded by `peft` itself onto the generator,
and read back by the pipeline with the same effect as the stored adapter."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.contract import adapter_key


def png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def trained(embedded_server: Any) -> tuple[Any, str]:
    """A server and an adapter it trained (3 steps, rank 2) from 10 uploaded images."""
    server = embedded_server()
    rng = np.random.default_rng(0)
    files = [("files", (f"img{i}.png", png(rng), "image/png")) for i in range(10)]
    form = {"steps": "3", "rank": "2", "learning_rate": "0.05", "name": "brand"}
    with server.client() as client:
        response = client.post("/v1/finetunes", files=files, data=form)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/finetunes/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    assert job["status"] == "succeeded", job
    return server, job["adapter_id"]


def generator_output(generator: torch.nn.Module, pipe: Any) -> torch.Tensor:
    cond, _, _ = pipe.prepare_conditions("red apple", None, 1)
    x = torch.randn(1, *pipe.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return generator(x, torch.tensor([0.6]), **cond)


def test_the_download_is_a_peft_adapter_that_peft_and_the_pipeline_load(
    trained: tuple[Any, str], t2i_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from model import FAEPipeline

    server, adapter_id = trained
    with server.client() as client:
        info = client.get(f"/v1/adapters/{adapter_id}")
        download = client.get(f"/v1/adapters/{adapter_id}/download")
        missing = client.get("/v1/adapters/nope/download")
    assert info.status_code == 200 and info.json()["id"] == adapter_id and info.json()["rank"] == 2
    assert info.json()["model"] == "tiny-t2i" and info.json()["name"] == "brand"
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    peft_dir = tmp_path / "peft"
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(peft_dir)
    assert sorted(p.name for p in peft_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["target_modules"]
    assert config["lora_alpha"] > 0 and config["base_model_name_or_path"] == "tiny-t2i"

    # the adapter as the worker stored it, in our own format
    stored_dir = tmp_path / "stored"
    server.app.state.services.storage.download_prefix(adapter_key("acme", adapter_id), stored_dir)

    def pipe_with(adapter_dir: Path | None) -> Any:
        pipe = FAEPipeline.from_pretrained(str(t2i_model_dir))
        if adapter_dir is not None:
            pipe.load_adapter(adapter_dir, adapter_id=adapter_id)
        return pipe

    base = pipe_with(None)
    plain = generator_output(base.generator, base)
    ours = generator_output(pipe_with(stored_dir).generator, base)
    assert (ours - plain).abs().max() > 1e-6  # the adapter changes the generator

    # peft loads the download onto a plain generator by itself, with the same effect
    peft_model = PeftModel.from_pretrained(pipe_with(None).generator, str(peft_dir))
    torch.testing.assert_close(generator_output(peft_model.base_model.model, base), ours, atol=1e-5, rtol=0)

    # and the pipeline reads peft's format too, with the same effect and the same base check
    from_peft = pipe_with(peft_dir)
    torch.testing.assert_close(generator_output(from_peft.generator, base), ours, atol=1e-5, rtol=0)
    images = [
        p(prompt="red apple", seed=4, num_inference_steps=3, output_type="pt").images
        for p in (from_peft, pipe_with(stored_dir))
    ]
    torch.testing.assert_close(images[0], images[1], atol=1e-5, rtol=0)


def test_the_gateway_and_the_model_stack_name_the_files_alike() -> None:
    """The gateway converts without importing the model stack, so it keeps copies of these names."""
    from model.adapters import format as model_format
    from service import adapter_export

    for name in ("WEIGHTS_NAME", "CONFIG_NAME", "PEFT_WEIGHTS_NAME", "PEFT_KEY_PREFIX", "PEFT_METADATA_KEY"):
        assert getattr(adapter_export, name) == getattr(model_format, name), name
    assert model_format.ADAPTER_FORMAT == "fae-lora"  # what `peft_config` accepts
