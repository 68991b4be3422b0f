"""The emoji image sources: pinned npm packages, fetched with `npm pack` and unpacked safely.

Kept apart from the processing in `demo.prepare_data` so that the processing runs (and is tested) on an already
extracted package directory without the network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

NPM_TIMEOUT_S = 600
IMAGE_SIZE_DIR = "64"  # the packages' per-emoji PNGs; the other image folders are sprite sheets


class EmojiDataError(RuntimeError):
    """The data could not be fetched or is not what was expected; the message says what to do."""


@dataclass(frozen=True)
class EmojiSource:
    style: str  # the word used in captions and file names
    package: str  # npm package name
    version: str
    integrity: str  # npm's sha512 integrity of the tarball: the registry must serve exactly this
    image_set: str  # folder under img/ in the package
    artwork: str  # human-readable name of the artwork
    license: str  # SPDX id of the artwork's licence

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball_name(self) -> str:
        return f"{self.package}-{self.version}.tgz"


SOURCES: dict[str, EmojiSource] = {
    "noto": EmojiSource(
        style="noto",
        package="emoji-datasource-google",
        version="16.0.0",
        integrity="sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        image_set="google",
        artwork="Noto Emoji v2.048 (Google)",
        license="Apache-2.0",
    ),
    "twemoji": EmojiSource(
        style="twemoji",
        package="emoji-datasource-twitter",
        version="16.0.0",
        integrity="sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        image_set="twitter",
        artwork="Twemoji v16.0.1 (the jdecked/twemoji fork of Twitter's Twemoji)",
        license="CC-BY-4.0",
    ),
}


def sha512_integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def find_npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiDataError(
            "npm is not installed: it fetches the emoji packages from the npm registry "
            "(Debian/Ubuntu: apt-get install npm; or install Node.js from nodejs.org)"
        )
    return npm


def fetch_tarball(source: EmojiSource, dest_dir: Path, reuse_dirs: tuple[Path, ...] = ()) -> Path:
    """`source`'s tarball in `dest_dir`: taken from `reuse_dirs` when a verified copy is there, else `npm pack`."""
    dest_dir = Path(dest_dir).resolve()  # npm runs in another working directory
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / source.tarball_name
    for directory in (dest_dir, *reuse_dirs):
        cached = directory / source.tarball_name
        if cached.is_file() and sha512_integrity(cached) == source.integrity:
            if cached != target:
                _link_or_copy(cached, target)
            return target
    npm = find_npm()
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=dest_dir) as work:
        command = [npm, "pack", source.spec, "--pack-destination", work, "--ignore-scripts", "--json"]
        try:
            result = subprocess.run(
                command, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise EmojiDataError(f"`npm pack {source.spec}` did not finish in {NPM_TIMEOUT_S} s") from exc
        packed = Path(work) / source.tarball_name
        if result.returncode != 0 or not packed.is_file():
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise EmojiDataError(
                f"`npm pack {source.spec}` failed (exit {result.returncode}); is the npm registry reachable? {detail}"
            )
        integrity = sha512_integrity(packed)
        if integrity != source.integrity:
            raise EmojiDataError(
                f"{source.spec} from the registry has integrity {integrity}, not the pinned {source.integrity}: "
                "refusing to use it"
            )
        os.replace(packed, target)
    return target


def _link_or_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not supported
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def extract_package(tarball: Path, dest: Path, source: EmojiSource) -> Path:
    """Unpack the parts the dataset needs (emoji.json, LICENSE, img/<set>/64/*.png) into `dest`; returns the
    package directory. Only regular files are extracted, each copied by hand to a path checked to lie inside
    `dest` (no links, no `..`): what tarfile's `data` filter does, which Python 3.11 has only from 3.11.4."""
    image_prefix = f"package/img/{source.image_set}/{IMAGE_SIZE_DIR}/"
    wanted_files = {"package/emoji.json", "package/LICENSE", "package/package.json"}
    root = Path(dest).resolve()
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive.getmembers():
                wanted = member.name in wanted_files or (
                    member.name.startswith(image_prefix) and member.name.endswith(".png")
                )
                if not (member.isfile() and wanted):
                    continue
                target = (root / member.name).resolve()
                if not target.is_relative_to(root):
                    raise EmojiDataError(f"{tarball} has a member outside its package: {member.name!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as data, target.open("wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(data, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise EmojiDataError(
            f"{tarball} is not a readable npm tarball ({exc}); delete it to fetch it again"
        ) from exc
    package_dir = Path(dest) / "package"
    if not (package_dir / "emoji.json").is_file():
        raise EmojiDataError(
            f"{tarball} ({source.spec}) has no package/emoji.json: not an emoji-datasource package"
        )
    if not (package_dir / "img" / source.image_set / IMAGE_SIZE_DIR).is_dir():
        raise EmojiDataError(
            f"{tarball} ({source.spec}) has no img/{source.image_set}/{IMAGE_SIZE_DIR}/ folder of emoji images"
        )
    return package_dir
