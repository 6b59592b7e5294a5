"""Download the official Omniglot archives, verified and written atomically.

Only the standard library is used (urllib), so that downloading needs nothing beyond the project's own
dependencies. A file is written under a temporary name in the target folder and renamed into place
only after its checksum matched, so an interrupted or corrupted download never leaves a file that the
loader would pick up.

Checksums. The official archives could not be fetched while writing this module, so no SHA-256 of them
is stated here. What *is* known are the MD5 digests that torchvision publishes for the very same
files at the very same address (`torchvision.datasets.Omniglot.zips_md5`); they are the default table.
Digests are written as "<algorithm>:<hex>" so a user can pin a SHA-256 instead (`checksums=`); the
SHA-256 of every downloaded file is logged at INFO (`metarl data download` prints it) so it can be pinned.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from classification.data import OMNIGLOT_SETS, OMNIGLOT_URL, resolve_data_root
from metarl.errors import UserError

OMNIGLOT_ARCHIVES = tuple(f"{name}.zip" for name in OMNIGLOT_SETS)
# MD5 digests of the official archives, as published by torchvision for the same URL.
# None (or a missing entry) means: download without verification.
OMNIGLOT_CHECKSUMS: dict[str, str | None] = {
    "images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
_CHUNK = 1 << 20
log = logging.getLogger(__name__)


def download_omniglot(
    data_root: str | Path | None = None,
    base_url: str = OMNIGLOT_URL,
    checksums: Mapping[str, str | None] | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch both official archives into `<data_root>/omniglot/` and return their paths.

    `checksums` overrides entries of `OMNIGLOT_CHECKSUMS` ("sha256:<hex>", "md5:<hex>", or None to skip
    verification). An archive that is already present and matches its checksum (or has none) is kept.
    """
    target = resolve_data_root(data_root) / "omniglot"
    target.mkdir(parents=True, exist_ok=True)
    table = {**OMNIGLOT_CHECKSUMS, **(checksums or {})}
    paths = []
    for name in OMNIGLOT_ARCHIVES:
        path = target / name
        expected = table.get(name)
        present = path.is_file()
        if present and (expected is None or _digest_file(path, expected) == _hex(expected)):
            log.info("%s already present", path)
            paths.append(path)
            continue
        try:
            download_file(base_url.rstrip("/") + "/" + name, path, expected, timeout)
        except UserError as error:
            if not present:
                raise
            stale = f"(The {name} already there does not match {expected}; it was left as it is.)"
            raise UserError(f"{error} {stale}") from None
        paths.append(path)
    return paths


def download_file(url: str, path: Path, expected: str | None = None, timeout: float = 60.0) -> str:
    """Stream `url` to `path` atomically, check `expected` ("<algorithm>:<hex>"), return the SHA-256."""
    algorithm = _algorithm(expected) if expected else None
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        sha256 = hashlib.sha256()
        check = hashlib.new(algorithm) if algorithm else None
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha256.update(chunk)
                if check is not None:
                    check.update(chunk)
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename makes it visible
        if check is not None and check.hexdigest() != _hex(expected):
            raise UserError(
                f"Checksum mismatch for {url}: expected {expected}, got {algorithm}:{check.hexdigest()}. "
                f"The download is corrupt or the file changed upstream; nothing was written to {path}. "
                f"Download it by hand and put it at {path} (the loaders read it from there without this check)."
            )
        os.replace(tmp, path)
    except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
        raise UserError(
            f"Could not download {url} ({error}). Download it by hand (in a browser or with curl) and put it at {path}."
        ) from error
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s (sha256:%s)", path, sha256.hexdigest())
    return sha256.hexdigest()


def _algorithm(expected: str) -> str:
    algorithm, _, digest = expected.partition(":")
    if not digest or algorithm not in hashlib.algorithms_available:
        raise UserError(f"Checksum {expected!r} is not of the form '<algorithm>:<hex>' (e.g. 'sha256:ab12..').")
    return algorithm


def _hex(expected: str) -> str:
    return expected.partition(":")[2].lower()


def _digest_file(path: Path, expected: str) -> str:
    digest = hashlib.new(_algorithm(expected))
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
