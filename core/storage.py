"""Object storage behind one interface: S3 (boto3) in production, a local directory in embedded mode.

Keys are S3-style (`tenants/<tenant>/jobs/<job>/0.png`). Local downloads go through the gateway's
`GET /v1/files/{key}` with an HMAC signature over key and expiry, so a URL opens one object until it expires.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import hashlib
import hmac
import mimetypes
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import quote, urlencode

from core.atomic import write_bytes_atomically
from core.contract import Job
from core.settings import Settings, StorageSettings

FILES_ROUTE = "/v1/files/"
_SIGNING_KEY_FILE = ".fae-signing-key"
T = TypeVar("T")


class InvalidKey(ValueError):
    """An object key that could escape its storage root or is otherwise malformed."""


def check_key(key: str) -> str:
    """The key itself if it is a safe relative path (no `..`, no leading `/` or `.` segment)."""
    if not key or len(key) > 1024 or "\\" in key or "\x00" in key or key.startswith("/"):
        raise InvalidKey(f"invalid object key {key!r}")
    if any(part in ("", "..") or part.startswith(".") for part in key.split("/")):
        raise InvalidKey(f"invalid object key {key!r}")
    return key


def content_type_for(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class StorageUnavailable(RuntimeError):
    """Object storage could not be reached, or answered with a server error: transient, worth retrying later
    (the gateway answers 503 with Retry-After; a job that ran out of retries fails with `storage_unavailable`)."""


def _transient(exc: BaseException) -> bool:
    """A connection failure, timeout or 5xx from storage. Never a 4xx (retrying a refusal cannot help) and never
    a configuration error such as missing credentials or a bad parameter: those are reported as they are."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, S3UploadFailedError):  # boto3 wraps the real cause of a failed upload
        return exc.__context__ is not None and _transient(exc.__context__)
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return isinstance(
        exc, BotoConnectionError | HTTPClientError | ReadTimeoutError | ConnectionError | TimeoutError
    )


def retry_storage(action: Callable[[], T], retry_s: float, base_s: float = 0.5, cap_s: float = 8.0) -> T:
    """`action()`, retried with capped exponential backoff (±20 % jitter) while storage is unavailable, for up
    to `retry_s` seconds; then StorageUnavailable."""
    deadline = time.monotonic() + retry_s
    delay = base_s
    while True:
        try:
            return action()
        except StorageUnavailable:
            if time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, cap_s)


class Storage(abc.ABC):
    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when missing."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        """Every key that starts with `prefix`, sorted, with when it was last written (UTC)."""

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""
        return [key for key, _ in self.list_modified(prefix)]

    @abc.abstractmethod
    def delete_keys(self, keys: list[str]) -> int:
        """Delete these keys (missing ones are fine); returns how many were asked for."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many."""
        return self.delete_keys(self.list(prefix))

    @abc.abstractmethod
    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL that downloads the object without credentials until it expires."""

    @abc.abstractmethod
    def ping(self) -> bool: ...

    def download_prefix(self, prefix: str, dest_dir: Path | str) -> list[Path]:
        """Copy every object under `prefix` into `dest_dir`, keeping the relative layout."""
        dest = Path(dest_dir)
        written = []
        for key in self.list(prefix):
            relative = key[len(prefix) :].lstrip("/")
            if not relative:
                continue
            check_key(relative)
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_bytes(key))
            written.append(target)
        return written


class LocalStorage(Storage):
    def __init__(self, root: Path | str, public_url: str = "", signing_key: bytes | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self._signing_key = signing_key or self._load_or_create_signing_key()

    def _load_or_create_signing_key(self) -> bytes:
        """A per-directory random key, kept next to the data so URLs survive restarts."""
        path = self.root / _SIGNING_KEY_FILE
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{_SIGNING_KEY_FILE}.", suffix=".tmp")
            try:
                os.write(fd, secrets.token_bytes(32))
                os.close(fd)
                os.link(tmp, path)  # fails if another process got there first: then its key wins
            except FileExistsError:
                pass
            finally:
                Path(tmp).unlink(missing_ok=True)
        return path.read_bytes()

    def path_for(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"invalid object key {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        write_bytes_atomically(self.path_for(key), data)

    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None:
        target = self.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        path = self.path_for(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        # Walk only the deepest directory the prefix names, then filter by the rest of the prefix.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.path_for(directory) if directory else self.root
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and relative.startswith(prefix) and not _hidden(relative):
                found.append((relative, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        return sorted(found)

    def delete_keys(self, keys: list[str]) -> int:
        for key in keys:
            self.path_for(key).unlink(missing_ok=True)
        return len(keys)

    def _signature(self, key: str, expires: int) -> str:
        mac = hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def presign_get(self, key: str, expires_s: int) -> str:
        check_key(key)
        expires = int(time.time()) + expires_s
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{self.public_url}{FILES_ROUTE}{quote(key)}?{query}"

    def verify(self, key: str, expires: int, signature: str) -> bool:
        """True for an unexpired URL that presign_get made for exactly this key."""
        if expires < time.time():
            return False
        return hmac.compare_digest(self._signature(key, expires), signature)

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)


class S3Storage(Storage):
    def __init__(self, settings: StorageSettings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        config = Config(
            s3={"addressing_style": "path" if settings.s3_path_style else "auto"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        common = {
            "region_name": settings.s3_region,
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": settings.s3_secret_access_key,
            "config": config,
        }
        self._client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        # Presigned URLs carry the host in their signature: sign with the endpoint callers will use.
        public = settings.s3_public_endpoint_url
        self._presign_client = boto3.client("s3", endpoint_url=public, **common) if public else self._client

    @contextmanager
    def _outage_is_unavailable(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if _transient(exc):
                raise StorageUnavailable(f"object storage is unavailable ({type(exc).__name__})") from exc
            raise

    def _not_found(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        check_key(key)
        with self._outage_is_unavailable():
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type or content_type_for(key)
            )

    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None:
        check_key(key)
        extra = {"ContentType": content_type or content_type_for(key)}
        with self._outage_is_unavailable():
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)

    def get_bytes(self, key: str) -> bytes:
        try:
            with self._outage_is_unavailable():
                return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if self._not_found(exc):
                raise FileNotFoundError(key) from exc
            raise

    def iter_bytes(self, key: str, start: int = 0, chunk_bytes: int = 8 * 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes from offset `start` on, in chunks (a ranged GET: an interrupted download resumes);
        FileNotFoundError when missing."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        try:
            with self._outage_is_unavailable():
                body = self._client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        except Exception as exc:
            if self._not_found(exc):
                raise FileNotFoundError(key) from exc
            raise
        with self._outage_is_unavailable(), contextlib.closing(body):
            yield from body.iter_chunks(chunk_bytes)

    def exists(self, key: str) -> bool:
        try:
            with self._outage_is_unavailable():
                self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:
            if self._not_found(exc):
                return False
            raise

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        found: list[tuple[str, datetime]] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        with self._outage_is_unavailable():
            for page in pages:
                found += [(item["Key"], item["LastModified"]) for item in page.get("Contents", [])]
        return sorted(found)

    def delete_keys(self, keys: list[str]) -> int:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with self._outage_is_unavailable():
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def presign_get(self, key: str, expires_s: int) -> str:
        return self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def ping(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:
            return False

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (development setups; operators bring their own)."""
        if not self.ping():
            self._client.create_bucket(Bucket=self.bucket)


def make_storage(settings: Settings) -> Storage:
    """S3 when configured (embedded mode's settings never are); otherwise files under data_dir/storage."""
    if settings.storage.backend == "s3":
        return S3Storage(settings.storage)
    return LocalStorage(Path(settings.process.data_dir) / "storage", settings.gateway.public_url)


def presign_outputs(job: Job, storage: Storage, expires_s: int) -> Job:
    """The job with a fresh download URL and its expiry on every output (what callers and webhooks see)."""
    if not job.outputs:
        return job
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
    outputs = [
        output.model_copy(
            update={"url": storage.presign_get(output.key, expires_s), "expires_at": expires_at}
        )
        for output in job.outputs
    ]
    return job.model_copy(update={"outputs": outputs})


def _hidden(relative_key: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(relative_key).parts)
