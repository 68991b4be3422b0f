"""FAEPipeline: noise → generator (flow matching, CFG) → latent → feature decoder → pixel decoder → RGB."""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .batching import Sample, StepBatcher, StepCallback
from .errors import GenerationCanceled, InvalidInputError
from .guidance import Condition, GuidanceSchedule
from .img2img import check_strength, images_to_tensor, steps_from
from .scheduling import check_sampler, check_steps

COMPONENT_MODULES = (
    "model.fae",
    "model.pixel_decoder",
    "model.lightning_dit",
    "model.mmdit",
    "model.scheduling",
    "model.encoders",
    "model.text_encoders",
)
MAX_IMAGES_PER_CALL = 64
# Below 2^53: JSON-safe in JavaScript. Kept equal to core.contract.MAX_SEED (tests/architecture/test_limits.py).
MAX_SEED = 2**53 - 1


@dataclass
class FAEPipelineOutput(BaseOutput):
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    seeds: list[int]


class FAEPipeline(DiffusionPipeline):
    """The whole FAE stack. Components (each saved in its own subfolder by `save_pretrained`):

    - `generator`: LightningDiT (class-conditional) or MMDiT (text-conditional), in normalised latent space;
    - `feature_decoder`, `pixel_decoder`: latent → encoder features → RGB;
    - `scheduler`: FlowMatchingScheduler;
    - optional: `compressor` (FAEEncoder) and `encoder` (the frozen representation encoder) for encoding images
      (training, fine-tunes, evaluation), `text_encoder` for text-conditional generators.
    """

    model_cpu_offload_seq = "text_encoder->generator->feature_decoder->pixel_decoder"
    _optional_components: ClassVar[list[str]] = ["compressor", "encoder", "text_encoder"]

    def __init__(
        self,
        generator: Any,
        feature_decoder: Any,
        pixel_decoder: Any,
        scheduler: Any,
        compressor: Any = None,
        encoder: Any = None,
        text_encoder: Any = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            generator=generator,
            feature_decoder=feature_decoder,
            pixel_decoder=pixel_decoder,
            scheduler=scheduler,
            compressor=compressor,
            encoder=encoder,
            text_encoder=text_encoder,
        )
        # ((device, dtype), encoding) of the empty prompt: every request's unconditional branch reuses it.
        self._null_text: tuple[tuple[torch.device, torch.dtype], Condition] | None = None

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any) -> FAEPipeline:
        # diffusers resolves the classes named in model_index.json from already-imported modules only.
        for module in COMPONENT_MODULES:
            importlib.import_module(module)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **overrides: Any) -> FAEPipeline:
        """A randomly initialised pipeline of a named preset (see `model.presets`)."""
        from .presets import build_components

        return cls(**build_components(name, seed=seed, **overrides))

    # --- properties ----------------------------------------------------------------------------------
    @property
    def condition_type(self) -> str:
        return self.generator.condition_type

    @property
    def num_classes(self) -> int | None:
        return self.generator.config.num_classes if self.condition_type == "class" else None

    @property
    def image_size(self) -> int:
        return self.pixel_decoder.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.generator.config
        return (cfg.in_channels, cfg.grid_size, cfg.grid_size)

    # --- latents ---------------------------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        cfg = self.generator.config
        if cfg.latent_mean is None or cfg.latent_std is None:
            return None
        mean = torch.tensor(cfg.latent_mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latent_std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        return mean, std

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats(z)
        return z if stats is None else (z - stats[0]) / stats[1]

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats(z)
        return z if stats is None else z * stats[1] + stats[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Images B×3×H×W in [0, 1] → normalised generator latents (needs `encoder` and `compressor`)."""
        if self.encoder is None or self.compressor is None:
            raise InvalidInputError(
                "this pipeline has no encoder/compressor: it can generate but not encode images"
            )
        features = self.encoder(images.to(self.device))
        posterior = self.compressor(features.to(self.compressor.dtype))
        return self.normalize_latents(posterior.sample() if sample else posterior.mode())

    @torch.no_grad()
    def decode_latents(
        self,
        latents: torch.Tensor,
        batch_size: int = 32,
        feature_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pixel_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Normalised latents → images B×3×H×W in [0, 1], decoded in batches.

        `feature_decoder`/`pixel_decoder` replace the modules' own forwards (e.g. compiled, bucketed ones).
        """
        feature_decoder = feature_decoder or self.feature_decoder
        pixel_decoder = pixel_decoder or self.pixel_decoder
        out = []
        for chunk in latents.split(batch_size):
            features = feature_decoder(self.denormalize_latents(chunk).to(self.feature_decoder.dtype))
            pixels = pixel_decoder(features.to(self.pixel_decoder.dtype))
            out.append(((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0))
        return torch.cat(out)

    @torch.no_grad()
    def encode_pil(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Users' images (any size; EXIF orientation, alpha on white: model/img2img.py) → normalised latents
        (the compressor's posterior mean)."""
        if self.encoder is None or self.compressor is None:
            raise InvalidInputError("this model has no encoder/compressor: it cannot take input images")
        return self.encode_images(images_to_tensor(images, self.encoder.image_size))

    @torch.no_grad()
    def reconstruct(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Strength 0: encode and decode only (how faithfully the model represents each image); B×3×H×W."""
        return self.decode_latents(self.encode_pil(images))

    @torch.no_grad()
    def embed(self, images: Sequence[PIL.Image.Image], kind: str) -> torch.Tensor:
        """Vectors of users' images: `latent` (the normalised latent averaged over its grid, C), `latent_tokens`
        (per grid cell, g²×C, row-major), `encoder` (the frozen encoder's tokens averaged, D)."""
        if self.encoder is None or self.compressor is None:
            raise InvalidInputError("this model has no encoder/compressor: it cannot embed images")
        pixels = images_to_tensor(images, self.encoder.image_size).to(self.device)
        if kind == "encoder":
            return self.encoder(pixels).float().mean(dim=1)
        latents = self.encode_images(pixels).float()
        if kind == "latent":
            return latents.mean(dim=(2, 3))
        if kind == "latent_tokens":
            return latents.flatten(2).transpose(1, 2)
        raise InvalidInputError(f"unknown embedding kind {kind!r}; choose latent, latent_tokens or encoder")

    # --- conditions ------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> Condition:
        emb = self.text_encoder.encode(prompts)
        dtype = self.generator.dtype
        return {
            "text_tokens": emb.tokens.to(self.device, dtype),
            "text_mask": emb.mask.to(self.device),
            "text_pooled": emb.pooled.to(self.device, dtype),
        }

    def null_text_condition(self) -> Condition:
        """The empty prompt's encoding (the unconditional branch), encoded once per device and dtype."""
        key = (self.device, self.generator.dtype)
        if self._null_text is None or self._null_text[0] != key:
            self._null_text = (key, self.encode_text([""]))
        return self._null_text[1]

    def prepare_conditions(
        self,
        prompt: str | Sequence[str] | None,
        class_labels: int | Sequence[int] | None,
        num_images: int,
        encoded: Condition | None = None,
        negative_prompt: str | None = None,
        encoded_negative: Condition | None = None,
    ) -> tuple[Condition, Condition, int]:
        """Validate the request's condition and return (cond, uncond, batch size).

        `encoded`: the prompts' encoding (each prompt repeated `num_images` times), when the caller already
        encoded several requests' prompts in one text-encoder call (the worker's engine does).
        `negative_prompt` (text models): its encoding replaces the empty prompt's as the unconditional branch,
        so guidance steers away from it; None keeps the empty prompt. `encoded_negative`: its encoding (one row),
        when the caller encoded it with other prompts."""
        if not 1 <= num_images <= MAX_IMAGES_PER_CALL:
            raise InvalidInputError(f"num_images must be from 1 to {MAX_IMAGES_PER_CALL}, got {num_images}")
        if self.condition_type == "class":
            if prompt is not None:
                raise InvalidInputError(
                    f"this model is class-conditional: pass class_labels (0..{self.num_classes - 1}), not a prompt"
                )
            if class_labels is None:
                raise InvalidInputError(f"this model needs class_labels (0..{self.num_classes - 1})")
            labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
            for label in labels:
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < self.num_classes:
                    raise InvalidInputError(
                        f"class label {label!r} is out of range: this model has classes 0..{self.num_classes - 1}"
                    )
            if negative_prompt is not None:
                raise InvalidInputError(
                    "negative_prompt needs a text-conditional model; this one takes class labels"
                )
            labels = [label for label in labels for _ in range(num_images)]
            cond = {"class_labels": torch.tensor(labels, dtype=torch.long, device=self.device)}
            return cond, self.generator.null_condition(len(labels), self.device), len(labels)
        if class_labels is not None:
            raise InvalidInputError("this model is text-conditional: pass a prompt, not class_labels")
        if prompt is None:
            raise InvalidInputError("this model is text-conditional: pass a prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise InvalidInputError("prompt must be a string or a non-empty list of strings")
        prompts = [p for p in prompts for _ in range(num_images)]
        if encoded is not None and any(v.shape[0] != len(prompts) for v in encoded.values()):
            raise InvalidInputError(
                f"the given prompt encoding has the wrong batch size for {len(prompts)} rows"
            )
        cond = encoded if encoded is not None else self.encode_text(prompts)
        if negative_prompt is None:
            null = self.null_text_condition()
        elif isinstance(negative_prompt, str) and negative_prompt.strip():
            if encoded_negative is not None and any(v.shape[0] != 1 for v in encoded_negative.values()):
                raise InvalidInputError("the given negative prompt encoding must have one row")
            null = encoded_negative if encoded_negative is not None else self.encode_text([negative_prompt])
        else:
            raise InvalidInputError("negative_prompt must be a non-empty string (or None)")
        uncond = {k: v.expand(len(prompts), *v.shape[1:]) for k, v in null.items()}
        return cond, uncond, len(prompts)

    @staticmethod
    def resolve_seeds(seed: int | Sequence[int] | None, batch_size: int) -> list[int]:
        """One seed per image: a list is used as is, an int seeds image i with seed + i, None draws them."""
        if seed is None:
            return [secrets.randbelow(MAX_SEED + 1) for _ in range(batch_size)]
        if isinstance(seed, int):
            seeds = [(seed + i) % (MAX_SEED + 1) for i in range(batch_size)]
        else:
            seeds = list(seed)
            if len(seeds) != batch_size:
                raise InvalidInputError(f"got {len(seeds)} seeds for {batch_size} images: give one per image")
        for s in seeds:
            if not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise InvalidInputError(f"seed {s!r} must be an integer from 0 to 2**53 - 1")
        return seeds

    def prepare_samples(
        self,
        prompt: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | None = None,
        num_images: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        seed: int | Sequence[int] | None = None,
        sampler: str = "euler",
        key: Hashable = None,
        adapter_slot: int = 0,
        encoded: Condition | None = None,
        negative_prompt: str | None = None,
        guidance_intervals: Sequence[tuple[float, float, float]] | None = None,
        encoded_negative: Condition | None = None,
        image: PIL.Image.Image | None = None,
        strength: float = 1.0,
    ) -> list[Sample]:
        """Validate a request and turn it into one `Sample` per image (keys `(key, index)`, or the index).
        `encoded`: its prompts already encoded; `negative_prompt`: the unconditional branch's text, and
        `encoded_negative` its encoding if already done (see `prepare_conditions`). Each sample carries its own unconditional row, so requests with different
        negative prompts share a step batch.

        With LoRA slots attached to the generator (model/adapters/slots.py), each sample carries its
        `adapter_slot` (0 for none), so samples with different adapters share a batch.

        `guidance_intervals`: `(t_min, t_max, scale)` triples (t = 1 is noise), with `guidance_scale` outside
        them, instead of a named `guidance_schedule` (model/guidance.py).

        `image` with `strength` in (0, 1): image-to-image (model/img2img.py): every sample starts from the
        image's latent noised to t = strength and runs the steps from there (strength 1: plain generation).
        """
        from .adapters import NO_ADAPTER, has_adapter_slots

        check_steps(num_inference_steps)
        check_sampler(sampler)
        guided = guidance_scale != 1.0 or bool(guidance_intervals) or guidance_schedule != "constant"
        guided = guided or negative_prompt is not None  # a negative prompt acts through guidance only
        strength = check_strength(strength)
        self.scheduler.check_supported(
            num_inference_steps, guided, sampler, strength if image is not None else 1.0
        )
        schedule = GuidanceSchedule.named(guidance_schedule, guidance_scale, guidance_intervals)
        cond, uncond, batch = self.prepare_conditions(
            prompt, class_labels, num_images, encoded, negative_prompt, encoded_negative
        )
        if adapter_slot != NO_ADAPTER and not has_adapter_slots(self.generator):
            raise InvalidInputError("adapter_slot needs adapter slots attached to the generator")
        seeds = self.resolve_seeds(seed, batch)
        init_latent, start_t, steps = None, 1.0, num_inference_steps
        if image is not None and strength < 1.0:
            if strength <= 0.0:
                raise InvalidInputError("strength 0 is reconstruction: call reconstruct(), not generation")
            init_latent = self.encode_pil([image])
            start_t, steps = strength, steps_from(self.scheduler, num_inference_steps, strength)
        elif image is None and strength != 1.0:
            raise InvalidInputError("strength needs an input image")
        return [
            Sample(
                key=row if key is None else (key, row),
                seed=seeds[row],
                num_steps=steps,
                cond={k: v[row : row + 1] for k, v in cond.items()},
                uncond={k: v[row : row + 1] for k, v in uncond.items()},
                schedule=schedule,
                stochastic=sampler == "euler_maruyama",
                adapter_slot=adapter_slot,
                init_latent=init_latent,
                start_t=start_t,
            )
            for row in range(batch)
        ]

    def step_batcher(self) -> StepBatcher:
        """An empty step-level batch on this pipeline's device (see model/batching.py)."""
        return StepBatcher(self.scheduler, self.latent_shape, self.device, self.generator.dtype)

    # --- LoRA adapters (logic in model/adapters/) ---------------------------------------------------
    def load_adapter(
        self, path: str | os.PathLike[str], adapter_id: str | None = None, scale: float = 1.0
    ) -> str:
        """Activate the adapter at `path` (kept in an in-memory LRU by id); refuses one made for another base."""
        from .adapters import adapter_manager

        return adapter_manager(self).load(path, adapter_id=adapter_id, scale=scale)

    def unload_adapter(self, adapter_id: str | None = None, evict: bool = False) -> None:
        """Back to the base outputs, exactly; the adapter stays cached unless `evict`."""
        from .adapters import adapter_manager

        manager = adapter_manager(self)
        manager.deactivate(adapter_id)
        if evict:
            for loaded in [adapter_id] if adapter_id is not None else list(manager.loaded):
                manager.evict(loaded)

    def set_adapter_scale(self, scale: float, adapter_id: str | None = None) -> None:
        from .adapters import adapter_manager

        adapter_manager(self).set_scale(scale, adapter_id)

    # --- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | None = None,
        num_images: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        seed: int | Sequence[int] | None = None,
        sampler: str = "euler",
        output_type: Literal["pil", "np", "pt"] = "pil",
        callback: StepCallback | None = None,
        negative_prompt: str | None = None,
        guidance_intervals: Sequence[tuple[float, float, float]] | None = None,
        image: PIL.Image.Image | None = None,
        strength: float = 1.0,
    ) -> FAEPipelineOutput:
        """Generate; with `image`, image-to-image at `strength` (0: its reconstruction, 1: plain generation)."""
        if output_type not in ("pil", "np", "pt"):
            raise InvalidInputError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if image is not None and check_strength(strength) == 0.0:
            images = self.reconstruct([image]).repeat(num_images, 1, 1, 1)
            seeds = self.resolve_seeds(seed, num_images)  # unused: reconstruction draws nothing
            return FAEPipelineOutput(images=to_output(images, output_type), seeds=seeds)
        samples = self.prepare_samples(
            prompt,
            class_labels,
            num_images,
            num_inference_steps,
            guidance_scale,
            guidance_schedule,
            seed,
            sampler,
            negative_prompt=negative_prompt,
            guidance_intervals=guidance_intervals,
            image=image,
            strength=strength,
        )
        batcher = self.step_batcher()
        batcher.add(samples)
        latents: dict[int, torch.Tensor] = {}
        total = samples[0].num_steps
        for i in range(total):
            for done in batcher.step(self.generator):
                latents[done.key] = done.latent
            if callback is not None and callback(i + 1, total):
                raise GenerationCanceled(f"generation canceled after step {i + 1} of {total}")
        x = torch.cat([latents[row] for row in range(len(samples))])
        images = self.decode_latents(x)
        return FAEPipelineOutput(images=to_output(images, output_type), seeds=[s.seed for s in samples])


def to_output(images: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Images B×3×H×W in [0, 1] to the requested type."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((a * 255.0).round().astype(np.uint8)) for a in array]
