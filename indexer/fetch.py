"""Content hashes for every gallery item, fetching URL sources into the index root's blob store.

Hashing is I/O-bound, so it runs in threads (hashlib and file reads release the GIL). A reindex
skips re-hashing a local file whose size and modification time match the previous version's
record, and re-downloading a URL the previous version already holds (URLs are taken to name
immutable photos; ``refresh_urls`` re-fetches them).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from birdsearch.indexer.gallery import GalleryItem

log = logging.getLogger(__name__)

BLOBS_DIR = "blobs"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 30.0
HASH_CHUNK = 64  # items per hashing task


@dataclass
class Hashed:
    """An item's content hash and where its bytes are, or why there are none."""

    item: GalleryItem
    content_hash: str | None = None
    file: str | None = None  # what decoding reads: the local file or the stored download
    blob: str | None = None  # stored download, relative to the index root
    size_bytes: int | None = None
    mtime_ns: int | None = None
    error: str | None = None
    reused: bool = False  # hash taken from the previous version without reading the file


@dataclass(frozen=True)
class PreviousRecord:
    """What the previous version knew about a key."""

    content_hash: str
    size_bytes: int | None
    mtime_ns: int | None
    blob: str | None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_local(item: GalleryItem, previous: PreviousRecord | None) -> Hashed:
    assert item.path is not None
    try:
        stat = os.stat(item.path)
    except OSError as e:
        return Hashed(item, error=f"cannot read file: {e.strerror or e}")
    if previous and previous.size_bytes == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
        return Hashed(
            item, previous.content_hash, item.path, None, stat.st_size, stat.st_mtime_ns, reused=True
        )
    digest = hashlib.sha256()
    try:
        with open(item.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        return Hashed(item, error=f"cannot read file: {e.strerror or e}")
    return Hashed(item, digest.hexdigest(), item.path, None, stat.st_size, stat.st_mtime_ns)


def blob_relpath(content_hash: str, url: str, content_type: str | None) -> str:
    suffix = PurePosixPath(urlparse(url).path).suffix.lower()
    if not suffix or len(suffix) > 6:
        suffix = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".bin"
    return f"{BLOBS_DIR}/{content_hash[:2]}/{content_hash}{suffix}"


def fetch_url(item: GalleryItem, root: Path, previous: PreviousRecord | None, refresh: bool) -> Hashed:
    """Download a URL source into ROOT/blobs (content-addressed), unless the previous version has it."""
    assert item.url is not None
    if previous and previous.blob and not refresh and (root / previous.blob).is_file():
        return Hashed(item, previous.content_hash, str(root / previous.blob), previous.blob, reused=True)
    request = urllib.request.Request(item.url, headers={"User-Agent": "birdsearch-indexer"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
            content_type = response.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return Hashed(item, error=f"download failed: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return Hashed(item, error=f"download failed: {getattr(e, 'reason', e)}")
    if len(data) > MAX_DOWNLOAD_BYTES:
        return Hashed(item, error=f"download larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB")
    content_hash = sha256_bytes(data)
    relative = blob_relpath(content_hash, item.url, content_type)
    target = root / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return Hashed(item, content_hash, str(target), relative, len(data))


def hash_items(
    items: list[GalleryItem],
    root: Path,
    previous: dict[str, PreviousRecord],
    threads: int = 8,
    refresh_urls: bool = False,
    progress: bool = False,
) -> list[Hashed]:
    """Hash (and fetch) every item in parallel threads, in the items' order."""
    from tqdm.auto import tqdm

    def chunk(part: list[GalleryItem]) -> list[Hashed]:
        return [
            fetch_url(item, root, previous.get(item.key), refresh_urls)
            if item.url
            else hash_local(item, previous.get(item.key))
            for item in part
        ]

    # Tasks of HASH_CHUNK items: one future per file cost more than the stat that usually decides it.
    parts = [items[i : i + HASH_CHUNK] for i in range(0, len(items), HASH_CHUNK)]
    hashed: list[Hashed] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
        tqdm(total=len(items), desc="hashing", unit="file", disable=not progress) as bar,
    ):
        for done in pool.map(chunk, parts):
            hashed.extend(done)
            bar.update(len(done))
    return hashed
