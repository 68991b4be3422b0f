"""`fae distill` on the tiny text preset: the recipe end to end, the pair cache's resume, and the student's
limits (its step counts, its built-in guidance) in the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fae.cli import main
from model.data import MAX_CAPTION_CHARS, scan_image_folder
from model.errors import DatasetError, InvalidInputError
from model.pipeline import FAEPipeline
from model.training import teacher_pairs as pairs_module
from model.training.teacher_pairs import PairSettings, read_prompts, teacher_pairs

PROMPTS = ["red apple", "blue heart", "rocket", "green apple", "sun", "ghost"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "tiny-t2i"
    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(0)
    with (
        torch.no_grad()
    ):  # a new model's zero-initialised output layers predict v = 0: give it a velocity field
        for p in pipe.generator.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    pipe.save_pretrained(str(path))
    # as a model saved before few-step students existed (models/fae-demo): no such keys in its scheduler config
    config_path = path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    del config["supported_steps"], config["distilled_guidance"]
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def student_dir(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("student")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = root / "student"
    args = [
        "distill",
        "--teacher",
        str(teacher_dir),
        "--out",
        str(out),
        "--prompts",
        str(root / "prompts.txt"),
    ]
    args += ["--steps-supported", "1,2,4", "--pairs", "12", "--teacher-steps", "3", "--chunk-size", "8"]
    args += ["--train-steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--threads", "1"]
    assert main(args) == 0
    return out


def test_the_recipe_writes_a_loadable_few_step_model(student_dir: Path, teacher_dir: Path) -> None:
    scheduler = json.loads((student_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["supported_steps"] == [1, 2, 4]
    assert scheduler["distilled_guidance"] == 4.0
    record = json.loads((student_dir / "distillation.json").read_text())
    assert record["pairs_generated_now"] == 12 and record["config"]["train_steps"] == 4
    student = FAEPipeline.from_pretrained(str(student_dir))
    teacher = FAEPipeline.from_pretrained(str(teacher_dir))
    changed = [
        name
        for name, p in student.generator.state_dict().items()
        if not torch.equal(p, teacher.generator.state_dict()[name])
    ]
    assert changed  # the generator was trained; the decoders are the teacher's
    assert torch.equal(
        next(iter(student.pixel_decoder.state_dict().values())),
        next(iter(teacher.pixel_decoder.state_dict().values())),
    )
    for steps in (1, 2, 4):
        out = student(prompt="rocket", num_inference_steps=steps, seed=1, output_type="pt")
        assert out.images.shape == (1, 3, student.image_size, student.image_size)


def test_the_student_refuses_other_step_counts_and_guidance(student_dir: Path) -> None:
    student = FAEPipeline.from_pretrained(str(student_dir))
    with pytest.raises(InvalidInputError, match="supports num_inference_steps 1, 2, 4, got 3"):
        student(prompt="rocket", num_inference_steps=3)
    with pytest.raises(ValueError, match="guidance 4 distilled in"):
        student(prompt="rocket", num_inference_steps=4, guidance_scale=4.0)
    with pytest.raises(ValueError, match="negative prompt"):
        student(prompt="rocket", num_inference_steps=4, negative_prompt="blurry")
    with pytest.raises(ValueError, match="euler"):
        student(prompt="rocket", num_inference_steps=4, sampler="euler_maruyama")


def test_a_distilled_model_is_not_a_teacher(student_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("rocket\n")
    args = ["distill", "--teacher", str(student_dir), "--out", str(tmp_path / "s2"), "--prompts"]
    assert main([*args, str(tmp_path / "p.txt"), "--pairs", "2", "--train-steps", "1"]) == 2


def test_pair_generation_resumes_at_the_first_missing_chunk(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = FAEPipeline.from_pretrained(str(teacher_dir))
    settings = PairSettings(count=10, teacher_steps=2, chunk_size=4)
    calls: list[int] = []
    real = pairs_module._teacher_chunk

    def failing_third(pipe, prompts, seeds, s):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the last chunk
        return real(pipe, prompts, seeds, s)

    monkeypatch.setattr(pairs_module, "_teacher_chunk", failing_third)
    with pytest.raises(KeyboardInterrupt):
        teacher_pairs(teacher, PROMPTS, settings, tmp_path)
    entry = next(tmp_path.iterdir())
    assert sorted(p.name for p in entry.iterdir()) == [
        "chunk-0000000-0000004.safetensors",
        "chunk-0000004-0000008.safetensors",
    ]  # whole chunks only: no temporaries left behind
    calls.clear()
    resumed = teacher_pairs(teacher, PROMPTS, settings, tmp_path)
    assert calls == [2] and resumed.generated == 2 and len(resumed) == 10
    monkeypatch.setattr(pairs_module, "_teacher_chunk", real)
    fresh = teacher_pairs(teacher, PROMPTS, settings, tmp_path / "fresh")
    assert torch.equal(fresh.latents, resumed.latents) and torch.equal(fresh.noise, resumed.noise)
    again = teacher_pairs(teacher, PROMPTS, settings, tmp_path)
    assert again.generated == 0  # a full hit
    other = teacher_pairs(teacher, PROMPTS, PairSettings(count=10, teacher_steps=3, chunk_size=4), tmp_path)
    assert other.path != resumed.path and other.generated == 10  # other settings: another entry


def test_prompts_come_from_captions_with_every_variant(tmp_path: Path) -> None:
    lines = [
        {"file": "a.png", "caption": ["red apple, food, noto style", "red apple"]},
        {"file": "b.png", "caption": "sun"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_prompts(tmp_path) == ["red apple, food, noto style", "red apple", "sun"]
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


def test_prompts_are_the_captions_training_sees(tmp_path: Path) -> None:
    import PIL.Image

    for name in ("a.png", "b.png", "c.png", "d.png"):
        PIL.Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / name)
    long = "word " * MAX_CAPTION_CHARS
    lines = [
        {"file": "a.png", "caption": ["  red\n apple,  food ", "red apple", " red  apple ", "", 7]},
        {"file": "b.png", "caption": long},
        {"file_name": "c.png", "caption": []},  # falls back to its sidecar, as in training
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file": "d.png", "caption": "\tsun\t"}) + "\n")
    (tmp_path / "c.txt").write_text("a  green\nsquare\n")
    seen = [c for choices in scan_image_folder(tmp_path).caption_choices() for c in choices if c]
    prompts = read_prompts(tmp_path)
    assert prompts == list(dict.fromkeys(seen))  # the same captions, cleaned the same way
    assert (
        prompts[:2] == ["red apple, food", "red apple"] and "a green square" in prompts and "sun" in prompts
    )
    assert max(map(len, prompts)) == MAX_CAPTION_CHARS
    assert read_prompts(tmp_path / "metadata.jsonl") == ["sun"]  # a manifest file on its own
    (tmp_path / "prompts.txt").write_text("  a   cat \n\n a cat\ndog\n")
    assert read_prompts(tmp_path / "prompts.txt") == ["a cat", "dog"]


@pytest.mark.parametrize(
    "line",
    ['{"file": "a.png", "caption": "unclosed', '["a.png", "red"]', '{"caption": "no file"}', '{"file": 3}'],
)
def test_a_malformed_caption_line_is_a_clear_dataset_error(tmp_path: Path, line: str) -> None:
    good = json.dumps({"file": "b.png", "caption": "sun"})
    (tmp_path / "captions.jsonl").write_text(f"{good}\n{line}\n")
    for source in (tmp_path, tmp_path / "captions.jsonl"):
        with pytest.raises(DatasetError, match=r"malformed line.*captions\.jsonl:2: bad manifest line"):
            read_prompts(source)
    assert scan_image_folder(tmp_path).skipped[0].relpath == "captions.jsonl:2"  # training: the same line


def test_an_adapter_of_the_teacher_is_refused_on_the_student(
    teacher_dir: Path, student_dir: Path, tmp_path: Path
) -> None:
    from model.errors import AdapterMismatchError
    from model.synthetic import write_dataset

    images = write_dataset(tmp_path / "brand", 10, style="brand", size=32)
    adapter = tmp_path / "adapter"
    args = ["finetune", "--base", str(teacher_dir), "--images", str(images), "--out", str(adapter)]
    assert main([*args, "--steps", "2", "--rank", "2", "--device", "cpu"]) == 0
    FAEPipeline.from_pretrained(str(teacher_dir)).load_adapter(adapter)  # its own base takes it
    student = FAEPipeline.from_pretrained(str(student_dir))
    with pytest.raises(AdapterMismatchError, match="trained on another base model"):
        student.load_adapter(adapter)


def test_training_resumed_from_a_checkpoint_trains_the_same_student(
    teacher_dir: Path, tmp_path: Path
) -> None:
    from model.training.distill import DistillConfig, distill

    teacher = FAEPipeline.from_pretrained(str(teacher_dir))
    pairs = PairSettings(count=8, teacher_steps=2, chunk_size=8)

    def config(steps: int) -> DistillConfig:
        return DistillConfig(pairs=pairs, train_steps=steps, batch_size=4, checkpoint_every=2)

    quiet = {"cache_dir": tmp_path / "cache", "log": lambda _: None}
    straight = distill(teacher, PROMPTS, tmp_path / "straight", config(4), **quiet)
    distill(teacher, PROMPTS, tmp_path / "resumed", config(2), **quiet)  # "killed" after step 2
    resumed = distill(teacher, PROMPTS, tmp_path / "resumed", config(4), **quiet)
    assert resumed["loss_last_10pct"] == pytest.approx(straight["loss_last_10pct"], rel=1e-4)
    a = FAEPipeline.from_pretrained(str(tmp_path / "straight")).generator.state_dict()
    b = FAEPipeline.from_pretrained(str(tmp_path / "resumed")).generator.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
