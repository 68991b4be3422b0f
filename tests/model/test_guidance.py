"""Classifier-free guidance: schedule semantics and the skipped unconditional pass."""

from __future__ import annotations

import pytest
import torch

from model.errors import InvalidInputError
from model.guidance import GuidanceSchedule, guided_rows, guided_velocity


class RecordingModel:
    """v = x + label (so conditional and unconditional outputs differ); records each call's batch size."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return x + class_labels.view(-1, 1, 1, 1).float()


def test_three_part_schedule_intervals() -> None:
    s = GuidanceSchedule.fae_three_part(2.5)
    assert s.scale_at(1.0) == 0.9 and s.scale_at(0.95) == 0.9 and s.scale_at(0.9) == 0.9
    assert s.scale_at(0.85) == 1.0 and s.scale_at(0.71) == 1.0
    assert s.scale_at(0.7) == 2.5 and s.scale_at(0.3) == 2.5 and s.scale_at(0.0) == 2.5
    assert GuidanceSchedule.named("fae-three-part", 4.0).scale_at(0.5) == 4.0
    assert GuidanceSchedule.named("constant", 3.0).scale_at(0.95) == 3.0


def test_unknown_schedule_and_bad_scale_are_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="unknown guidance schedule"):
        GuidanceSchedule.named("cosine", 2.0)
    with pytest.raises(InvalidInputError, match="between 0 and 30"):
        GuidanceSchedule.named("constant", -1.0)


def test_guided_velocity_per_sample_scale_and_skipped_unconditional_pass() -> None:
    model = RecordingModel()
    x = torch.zeros(3, 2, 1, 1)
    t = torch.full((3,), 0.5)
    cond = {"class_labels": torch.tensor([4, 5, 6])}
    uncond = {"class_labels": torch.tensor([10, 10, 10])}
    scales = [1.0, 3.0, 0.0]
    assert guided_rows(scales) == [1, 2]  # found on the host, never by reading the device
    v = guided_velocity(model, x, t, cond, uncond, torch.tensor(scales), torch.tensor(guided_rows(scales)))
    # One forward of 3 conditional rows + 2 unconditional rows (the row with scale 1 needs none).
    assert model.batch_sizes == [5]
    assert torch.allclose(v[0], torch.full((2, 1, 1), 4.0))  # scale 1: conditional as is
    assert torch.allclose(v[1], torch.full((2, 1, 1), 10.0 + 3.0 * (5.0 - 10.0)))
    assert torch.allclose(v[2], torch.full((2, 1, 1), 10.0))  # scale 0: unconditional


def test_no_guidance_means_one_conditional_pass() -> None:
    model = RecordingModel()
    x = torch.zeros(2, 2, 1, 1)
    guided_velocity(
        model,
        x,
        torch.ones(2),
        {"class_labels": torch.tensor([1, 2])},
        {"class_labels": torch.tensor([0, 0])},
        torch.ones(2),
        None,
    )
    assert model.batch_sizes == [2]


def test_the_model_sees_its_dtype_and_the_combination_is_fp32() -> None:
    """A bf16 generator gets bf16 input; its velocity comes back, and is combined, in fp32."""
    seen: list[torch.dtype] = []

    def bf16_model(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return (x + class_labels.view(-1, 1, 1, 1)).to(torch.bfloat16)

    x = torch.full((2, 1, 1, 1), 1.0 / 3.0)
    v = guided_velocity(
        bf16_model,
        x,
        torch.ones(2),
        {"class_labels": torch.tensor([1, 2])},
        {"class_labels": torch.tensor([0, 0])},
        torch.tensor([1.0, 1.1]),
        torch.tensor([1]),
        torch.bfloat16,
    )
    assert seen == [torch.bfloat16] and v.dtype == torch.float32
    x_bf16 = float(x.to(torch.bfloat16)[0])
    cond, uncond = float(torch.tensor(x_bf16 + 2).bfloat16()), float(torch.tensor(x_bf16).bfloat16())
    assert float(v[1]) == pytest.approx(uncond + 1.1 * (cond - uncond), rel=1e-6)


def test_the_papers_t2i_schedule_and_interval_lists() -> None:
    t2i = GuidanceSchedule.named("fae-t2i", 1.5)
    assert t2i.scale_at(0.0) == t2i.scale_at(0.9) == 1.5 and t2i.scale_at(0.91) == t2i.scale_at(1.0) == 1.0
    # The named schedules are interval lists: the three-part one written out gives the same scales.
    listed = GuidanceSchedule.named("constant", 1.0, [(0.0, 0.7, 2.5), (0.9, 1.0, 0.9)])
    three_part = GuidanceSchedule.fae_three_part(2.5)
    for t in torch.linspace(0, 1, 101).tolist():
        assert listed.scale_at(t) == three_part.scale_at(t), t
    # guidance_scale holds outside the intervals; at a shared end the higher interval wins
    touching = GuidanceSchedule.named("constant", 2.0, [(0.2, 0.5, 3.0), (0.5, 0.8, 4.0)])
    assert [touching.scale_at(t) for t in (0.1, 0.3, 0.5, 0.6, 0.9)] == [2.0, 3.0, 4.0, 4.0, 2.0]


@pytest.mark.parametrize(
    ("intervals", "words"),
    [
        ([(0.5, 0.2, 2.0)], "t_min < t_max"),
        ([(0.3, 0.3, 2.0)], "t_min < t_max"),
        ([(-0.1, 0.5, 2.0)], "t_min < t_max"),
        ([(0.5, 1.5, 2.0)], "t_min < t_max"),
        ([(0.0, 0.5, 31.0)], "between 0 and 30"),
        ([(0.0, float("nan"), 2.0)], "finite"),
        ([(0.0, 0.6, 2.0), (0.5, 0.9, 3.0)], "overlap"),
        ([], "1 to 8"),
        ([(i / 10, (i + 1) / 10, 2.0) for i in range(9)], "1 to 8"),
    ],
)
def test_bad_intervals_are_clear_errors(intervals: list, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        GuidanceSchedule.named("constant", 1.0, intervals)


def test_intervals_and_a_named_schedule_are_not_combined() -> None:
    with pytest.raises(InvalidInputError, match="not both"):
        GuidanceSchedule.named("fae-three-part", 2.0, [(0.0, 0.5, 2.0)])
