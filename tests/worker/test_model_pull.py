"""`fae models pull` against a real SeaweedFS S3 server: verified, refused when tampered, resumed, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.manifests import MANIFEST_NAME, ChecksumMismatch, ManifestError, read_manifest, write_manifest
from core.settings import Settings, get_settings
from fae.cli import main
from worker import model_pull
from worker.model_pull import open_source, pull_model, staging_dir

PREFIX = "models/demo/2"


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """`fae models` reads the process's settings once (`get_settings`); these tests set FAE_ variables per test."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def make_model(root: Path) -> Path:
    """A small model directory: configs, and weights large enough to span several download chunks."""
    (root / "generator").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FAEPipeline"}))
    (root / "generator" / "config.json").write_text(json.dumps({"_class_name": "MMDiT", "image_size": 64}))
    (root / "generator" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(300_000))
    (root / "text_encoder" / "weights.bin").write_bytes(os.urandom(200_000))
    return root


def upload(s3_server, bucket: str, directory: Path, prefix: str) -> None:
    client = s3_server.client()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")


@pytest.fixture
def settings(s3_server, s3_bucket: str) -> Settings:
    return Settings().override(**s3_server.settings_fields("unused-output-bucket"))


@pytest.fixture
def published(tmp_path: Path, s3_server, s3_bucket: str) -> Iterator[tuple[Path, str]]:
    """A model with its manifest, uploaded under s3://bucket/PREFIX."""
    source_dir = make_model(tmp_path / "source")
    assert main(["models", "manifest", str(source_dir), "--version", "2"]) == 0
    upload(s3_server, s3_bucket, source_dir, PREFIX)
    yield source_dir, f"s3://{s3_bucket}/{PREFIX}"


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_pull, "_CHUNK", 64 * 1024)


def test_pull_from_s3_verifies_every_file_and_moves_the_model_into_place(
    published, tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    source_dir, url = published
    for name, value in s3_server.settings_fields("unused").items():
        if name != "storage_backend":
            monkeypatch.setenv(f"FAE_{name.upper()}", str(value))
    monkeypatch.setenv("FAE_MODEL_SOURCE", url)
    target = tmp_path / "models" / "demo-2"

    assert main(["models", "pull", "--into", str(target)]) == 0  # the source from FAE_MODEL_SOURCE
    out = capsys.readouterr().out
    manifest = read_manifest(target)
    assert manifest is not None and manifest.version == "2"
    assert f"fingerprint {manifest.fingerprint}" in out and "pulled and verified" in out
    for relative in manifest.files:
        assert (target / relative).read_bytes() == (source_dir / relative).read_bytes()
    assert main(["models", "verify", str(target)]) == 0
    assert not list(target.parent.glob(".demo-2.partial-*"))  # the staging directory became the model

    # Pulling again is a no-op that says so (every pod's init container runs it).
    assert main(["models", "pull", url, "--into", str(target), "--verify-existing"]) == 0
    assert "already present" in capsys.readouterr().out


def test_a_tampered_file_is_refused_and_nothing_is_moved_into_place(
    published, tmp_path: Path, s3_server, s3_bucket: str, settings: Settings
) -> None:
    _, url = published
    s3_server.client().put_object(
        Bucket=s3_bucket, Key=f"{PREFIX}/text_encoder/weights.bin", Body=os.urandom(200_000)
    )
    target = tmp_path / "models" / "demo-2"
    with pytest.raises(ChecksumMismatch, match=r"text_encoder/weights.bin does not match its manifest"):
        pull_model(open_source(url, settings), target)
    assert not target.exists()


def test_a_tampered_file_fails_the_command_with_one_clear_line(
    published, tmp_path: Path, s3_server, s3_bucket: str
) -> None:
    """The init container's view: exit code 2 and the reason on stderr, no traceback, no model."""
    _, url = published
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"{PREFIX}/generator/config.json", Body=b"{}")
    env = {**os.environ, **{f"FAE_{k.upper()}": str(v) for k, v in s3_server.settings_fields("x").items()}}
    target = tmp_path / "models" / "demo-2"
    result = subprocess.run(
        [sys.executable, "-m", "fae.cli", "models", "pull", url, "--into", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "generator/config.json does not match its manifest" in result.stderr
    assert "Traceback" not in result.stderr and not target.exists()


def test_a_source_without_a_manifest_is_refused(tmp_path: Path, s3_server, s3_bucket: str, settings) -> None:
    upload(s3_server, s3_bucket, make_model(tmp_path / "bare"), "bare")
    with pytest.raises(ManifestError, match=r"has no fae-manifest.json: write one with `fae models manifest"):
        pull_model(open_source(f"s3://{s3_bucket}/bare", settings), tmp_path / "out")


def test_an_interrupted_pull_resumes_and_keeps_what_it_verified(
    published, tmp_path: Path, settings: Settings, small_chunks: None
) -> None:
    """The connection drops in the middle of the second file; the next pull downloads only the rest."""
    source_dir, url = published
    target = tmp_path / "models" / "demo-2"
    real = open_source(url, settings)
    manifest = read_manifest(source_dir)
    assert manifest is not None

    class DropsMidFile:
        def __str__(self) -> str:
            return str(real)

        def read_manifest(self) -> bytes:
            return real.read_manifest()

        def iter_file(self, relative: str, start: int) -> Iterator[bytes]:
            for index, chunk in enumerate(real.iter_file(relative, start)):
                if relative == "generator/diffusion_pytorch_model.safetensors" and index == 2:
                    raise ConnectionResetError("connection dropped")
                yield chunk

    with pytest.raises(ConnectionResetError):
        pull_model(DropsMidFile(), target)
    assert not target.exists()  # a worker sees no model, never a half-written one
    staged = staging_dir(target.absolute(), manifest.fingerprint)
    partial = staged / "generator" / "diffusion_pytorch_model.safetensors"
    assert partial.stat().st_size == 2 * 64 * 1024  # two chunks landed before the drop

    result = pull_model(real, target)
    assert result.status == "pulled"
    big = manifest.files["generator/diffusion_pytorch_model.safetensors"].size
    small = manifest.files["text_encoder/weights.bin"].size
    # Only the rest of the interrupted file and the files not reached yet were downloaded.
    configs = sum(
        e.size for p, e in manifest.files.items() if p.endswith(".json") and p != "generator/config.json"
    )
    assert result.downloaded_bytes == (big - 2 * 64 * 1024) + small + configs
    assert result.reused_files == 1  # generator/config.json, verified before the drop
    for relative in manifest.files:
        assert (target / relative).read_bytes() == (source_dir / relative).read_bytes()


def test_a_partial_staging_directory_left_by_a_killed_pull_is_resumed(
    published, tmp_path: Path, settings: Settings
) -> None:
    """As a killed init container leaves it: one file complete, one cut short, one with garbage."""
    source_dir, url = published
    manifest = read_manifest(source_dir)
    assert manifest is not None
    target = tmp_path / "models" / "demo-2"
    staged = staging_dir(target.absolute(), manifest.fingerprint)
    (staged / "generator").mkdir(parents=True)
    (staged / "text_encoder").mkdir()
    weights = (source_dir / "generator" / "diffusion_pytorch_model.safetensors").read_bytes()
    (staged / "generator" / "diffusion_pytorch_model.safetensors").write_bytes(weights[:100_000])
    (staged / "model_index.json").write_bytes((source_dir / "model_index.json").read_bytes())
    (staged / "text_encoder" / "weights.bin").write_bytes(b"not the weights")
    (staged / "stray.tmp").write_bytes(b"left over")

    result = pull_model(open_source(url, settings), target)
    assert result.status == "pulled" and result.reused_files == 1
    configs = manifest.files["generator/config.json"].size
    # The cut-short file continued from byte 100,000; the garbage one was tried as a prefix, then fetched whole.
    assert result.downloaded_bytes == (300_000 - 100_000) + (200_000 - 15) + 200_000 + configs
    assert (target / "generator" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert not (target / "stray.tmp").exists()
    assert main(["models", "verify", str(target)]) == 0


def test_a_different_model_is_never_pulled_over_an_existing_one(
    published, tmp_path: Path, settings: Settings
) -> None:
    _, url = published
    other = make_model(tmp_path / "other")
    write_manifest(other, "1")
    with pytest.raises(FileExistsError, match=r"already holds another model"):
        pull_model(open_source(url, settings), other)
    result = pull_model(open_source(url, settings), other, replace=True)
    assert result.status == "pulled" and read_manifest(other).version == "2"  # type: ignore[union-attr]
    assert not list(other.parent.glob(".other.old-*"))


def test_an_expected_fingerprint_must_be_a_real_one(tmp_path: Path) -> None:
    """A pin that names no fingerprint (empty, a bare `sha256:`, too short, not hex) is refused: it would
    match any manifest."""
    source = make_model(tmp_path / "src")
    fingerprint = write_manifest(source, "1").fingerprint
    for pin in ("", "sha256:", fingerprint[:8], "zz" + fingerprint[2:]):
        with pytest.raises(ManifestError, match=r"not a fingerprint|not the expected"):
            pull_model(open_source(str(source), Settings()), tmp_path / "into", expect_fingerprint=pin)
    assert not (tmp_path / "into").exists()
    result = pull_model(
        open_source(str(source), Settings()), tmp_path / "into", expect_fingerprint=fingerprint[:12]
    )
    assert result.status == "pulled"


def test_verify_names_a_file_damaged_after_the_pull(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    write_manifest(model, "1")
    (model / "text_encoder" / "weights.bin").write_bytes(b"rot")
    with pytest.raises(ChecksumMismatch, match=r"text_encoder/weights.bin: 3 bytes"):
        from core.manifests import verify_directory

        verify_directory(model)
    (model / "extra.bin").write_bytes(b"x")
    (model / "text_encoder" / "weights.bin").unlink()
    with pytest.raises(ChecksumMismatch, match=r"missing"):
        from core.manifests import verify_directory

        verify_directory(model)


def test_a_model_needing_external_encoder_weights_waits_for_them(tmp_path: Path, settings: Settings) -> None:
    """Encoder weights referenced by path travel as their own pull; the model is not moved in before them."""
    encoder = tmp_path / "models" / "dinov2-small"
    model = make_model(tmp_path / "src")
    (model / "encoder").mkdir()
    (model / "encoder" / "config.json").write_text(json.dumps({"kind": "dinov2", "path": str(encoder)}))
    manifest = write_manifest(model, "3")
    assert manifest.references == (str(encoder),)
    target = tmp_path / "models" / "demo-3"
    with pytest.raises(ManifestError, match=r"needs .*dinov2-small .*pull those first"):
        pull_model(open_source(str(model), settings), target)
    assert not target.exists()
    encoder.mkdir(parents=True)
    assert pull_model(open_source(str(model), settings), target).status == "pulled"
    assert (target / MANIFEST_NAME).is_file()


class RangeServer:
    """A loopback HTTP file server that honours `Range: bytes=N-` and sends slowly (so a pull can be killed
    mid-file), recording each request's path and range."""

    def __init__(self, root: Path, chunk_delay_s: float) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, str | None]] = []
        server_ref = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = root / self.path.lstrip("/")
                server_ref.requests.append((self.path, self.headers.get("Range")))
                if not path.is_file():
                    self.send_response(404)
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = (
                    int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                )
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                for offset in range(start, len(data), 32 * 1024):
                    self.wfile.write(data[offset : offset + 32 * 1024])
                    time.sleep(chunk_delay_s)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_a_killed_pull_over_http_resumes_with_a_ranged_request(tmp_path: Path) -> None:
    """SIGKILL the real `fae models pull` process mid-file; the next pull asks only for the missing bytes."""
    import signal

    served = tmp_path / "www" / "model"
    make_model(served)
    (served / "generator" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(1_500_000))
    manifest = write_manifest(served, "7")
    server = RangeServer(tmp_path / "www", chunk_delay_s=0.02)
    target = tmp_path / "models" / "m-7"
    weights = "generator/diffusion_pytorch_model.safetensors"
    partial = staging_dir(target, manifest.fingerprint) / weights
    command = [sys.executable, "-m", "fae.cli", "models", "pull", server.url, "--into", str(target)]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (partial.is_file() and partial.stat().st_size >= 256 * 1024):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        kept = partial.stat().st_size
        assert 0 < kept < 1_500_000 and not target.exists()

        server.requests.clear()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "pulled and verified" in result.stdout
        assert (f"/model/{weights}", f"bytes={kept}-") in server.requests  # only the rest was asked for
        assert (target / weights).read_bytes() == (served / weights).read_bytes()
    finally:
        server.close()


def test_wrong_s3_credentials_fail_the_command_with_one_clear_line(
    published, tmp_path: Path, s3_server
) -> None:
    _, url = published
    fields = {**s3_server.settings_fields("x"), "s3_secret_access_key": "not-the-secret"}
    env = {**os.environ, **{f"FAE_{k.upper()}": str(v) for k, v in fields.items()}}
    result = subprocess.run(
        [sys.executable, "-m", "fae.cli", "models", "pull", url, "--into", str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and f"could not read {url}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m").exists()


def test_two_pods_pulling_into_one_volume_take_turns(tmp_path: Path) -> None:
    """Two init containers (generate and finetune workers) on one shared volume: one pulls, the other finds it."""
    served = tmp_path / "www" / "model"
    make_model(served)
    write_manifest(served, "1")
    server = RangeServer(tmp_path / "www", chunk_delay_s=0.005)
    target = tmp_path / "models" / "m-1"
    command = [sys.executable, "-m", "fae.cli", "models", "pull", server.url, "--into", str(target)]
    try:
        pods = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
        ]
        outputs = [pod.communicate(timeout=120) for pod in pods]
    finally:
        server.close()
    assert [pod.returncode for pod in pods] == [0, 0], outputs
    said = [out for out, _ in outputs]
    assert sum("pulled and verified" in out for out in said) == 1
    assert sum("already present" in out for out in said) == 1
    assert main(["models", "verify", str(target)]) == 0


def test_a_redirect_from_https_to_http_is_refused() -> None:
    """An HTTPS pull follows redirects that stay on HTTPS and refuses one that leaves it (checked on each hop)."""
    import httpx

    from worker.model_pull import HttpSource, refuse_downgrade

    def hop(location: str) -> httpx.Response:
        return httpx.Response(
            302, headers={"location": location}, request=httpx.Request("GET", "https://a/m/x")
        )

    refuse_downgrade(hop("https://mirror/m/x"))
    refuse_downgrade(hop("/elsewhere/x"))  # relative: same scheme
    refuse_downgrade(httpx.Response(200, request=httpx.Request("GET", "https://a/m/x")))
    refuse_downgrade(
        httpx.Response(302, headers={"location": "http://b/x"}, request=httpx.Request("GET", "http://a/x"))
    )
    with pytest.raises(ValueError, match="stays on it"):
        refuse_downgrade(hop("http://mirror/m/x"))
    client = HttpSource("https://a/m").client  # the hook is on every pull's client
    assert refuse_downgrade in client.event_hooks["response"]
