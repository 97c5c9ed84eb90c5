"""A feed's image URLs, downloaded for the indexer: concurrently, with the project's SSRF-safe
fetcher (shared/fetch.py: every resolved address checked, sizes and times capped), retried like
the bg-service calls, and kept in an on-disk cache so that an update downloads only what changed.

- 429, 5xx, timeouts and refused connections are retried with exponential backoff; when the
  retries run out the download stops with ImageFetchError (the build then stops and leaves the
  previous index as it was): a host that is down must not silently drop products.
- 404 and 410 (gone) and other 4xx, a refused address, an over-size body: the image is skipped,
  with its reason in the report.
- The cache is keyed by URL. An entry keeps the host's validators (ETag, Last-Modified); the next
  download asks with If-None-Match / If-Modified-Since, and a 304 reuses the file without a body.
  A host that sends neither is downloaded again; the content hash then tells the builder whether
  the image changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from shared.errors import BadRequest, PayloadTooLarge, UpstreamError, UpstreamTimeout
from shared.fetch import FetchPolicy, UpstreamStatus, fetch

RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class ImageFetchError(RuntimeError):
    """An image host kept failing after the retries; the build stops."""


@dataclass
class DownloadReport:
    files: dict[str, Path] = field(default_factory=dict)  # url -> cached file
    sha256: dict[str, str] = field(default_factory=dict)  # url -> content hash
    skipped: dict[str, str] = field(default_factory=dict)  # url -> reason
    bodies: int = 0  # responses that carried an image (not 304s)
    not_modified: int = 0
    bytes: int = 0


class ImageCache:
    """One file per URL (named by the URL's sha256) and a JSON record beside it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.directory / f"{key}.img", self.directory / f"{key}.json"

    def record(self, url: str) -> dict | None:
        image, meta = self._paths(url)
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        return record if image.is_file() and record.get("url") == url else None

    def file(self, url: str) -> Path:
        return self._paths(url)[0]

    def store(self, url: str, body: bytes, headers: dict[str, str]) -> dict:
        image, meta = self._paths(url)
        record = {"url": url, "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body),
                  "etag": headers.get("etag"), "last_modified": headers.get("last-modified")}
        for path, data in ((image, body), (meta, json.dumps(record).encode())):
            staged = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
            staged.write_bytes(data)
            os.replace(staged, path)  # readers see the old file or the new one, never half
        return record


def _validators(record: dict | None) -> dict[str, str]:
    if not record:
        return {}
    headers = {}
    if record.get("etag"):
        headers["If-None-Match"] = record["etag"]
    if record.get("last_modified"):
        headers["If-Modified-Since"] = record["last_modified"]
    return headers


def download_one(url: str, cache: ImageCache, policy: FetchPolicy, *, retries: int = 5,
                 backoff_s: float = 0.5) -> tuple[str, dict | None, str | None, bool]:
    """(url, cache record or None, skip reason or None, whether a body came) for one image."""
    record = cache.record(url)
    for attempt in range(retries + 1):
        try:
            got = fetch(url, policy, _validators(record))
        except UpstreamStatus as exc:
            if exc.upstream_status not in RETRIED_STATUSES:
                gone = " (gone)" if exc.upstream_status in (404, 410) else ""
                return url, None, f"HTTP {exc.upstream_status}{gone}", False
            failure = f"HTTP {exc.upstream_status}"
        except (BadRequest, PayloadTooLarge) as exc:  # a refused address, a bad URL, too large
            return url, None, exc.detail, False
        except (UpstreamTimeout, UpstreamError) as exc:
            failure = exc.detail
        else:
            if got.status == 304:
                return url, record, None, False
            return url, cache.store(url, got.body, got.headers), None, True
        if attempt < retries:
            time.sleep(backoff_s * 2 ** attempt)
    raise ImageFetchError(f"{url}: {failure}, still after {retries} retries")


def download_images(urls: list[str], cache: ImageCache, policy: FetchPolicy, *, workers: int = 8,
                    retries: int = 5, backoff_s: float = 0.5, progress: bool = True) -> DownloadReport:
    """Every URL into `cache` (each once, `workers` at a time), with a progress bar of images/s
    and bytes. Raises ImageFetchError when a host keeps failing."""
    report = DownloadReport()
    unique = list(dict.fromkeys(urls))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="image-fetch") as pool, \
            tqdm(total=len(unique), unit="img", desc="images", disable=not progress) as bar:
        jobs = [pool.submit(download_one, url, cache, policy, retries=retries, backoff_s=backoff_s) for url in unique]
        try:
            for job in jobs:
                url, record, reason, had_body = job.result()
                if reason is not None:
                    report.skipped[url] = reason
                else:
                    report.files[url] = cache.file(url)
                    report.sha256[url] = record["sha256"]
                    report.bodies += had_body
                    report.not_modified += not had_body
                    report.bytes += record["bytes"] if had_body else 0
                bar.update(1)
                bar.set_postfix(downloaded=f"{report.bytes / 1e6:.1f} MB", skipped=len(report.skipped))
        except ImageFetchError:
            for job in jobs:
                job.cancel()
            raise
    return report
