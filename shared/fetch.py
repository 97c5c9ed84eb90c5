"""Fetching images from client-supplied URLs without becoming an SSRF proxy.

The host is resolved once, every resolved address is checked, and the connection goes to the
checked address (TLS still verifies the real host name), so a DNS answer that changes between
check and connect cannot redirect us inside the network. Redirects are followed by hand and
re-checked; size and time are capped while streaming.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urljoin, urlsplit

import urllib3
from pydantic import BeforeValidator
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from shared.errors import BadRequest, PayloadTooLarge, UpstreamError, UpstreamTimeout
from shared.settings import Settings, setting

USER_AGENT = "fashion-services-image-fetcher/1.0"
CHUNK_BYTES = 64 * 1024


def _host_list(value):
    if isinstance(value, str):
        return frozenset(h.strip().lower() for h in value.split(",") if h.strip())
    return value


class FetchPolicy(Settings):
    """How images are fetched from client-supplied URLs (both services)."""

    connect_timeout: float = setting(3.0, env="FETCH_CONNECT_TIMEOUT", gt=0, description="seconds to connect")
    read_timeout: float = setting(5.0, env="FETCH_READ_TIMEOUT", gt=0, description="seconds between bytes")
    deadline: float = setting(10.0, env="FETCH_DEADLINE", gt=0,
                              description="seconds for the whole download, redirects included")
    max_bytes: int = setting(20 * 1024 * 1024, env="FETCH_MAX_BYTES", ge=1,
                             description="download cap, enforced while streaming")
    max_redirects: int = setting(3, env="FETCH_MAX_REDIRECTS", ge=0, description="each target is re-checked")
    # Off by default; tests and operators with an internal image store set it explicitly.
    allow_hosts: Annotated[frozenset[str], BeforeValidator(_host_list)] = setting(
        frozenset(), env="FETCH_ALLOW_HOSTS",
        description="comma-separated hosts (names or IP literals) exempt from the address check "
                    "(tests, internal stores)")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 and friends are judged by the IPv4 address they carry.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _resolve_checked(host: str, port: int, policy: FetchPolicy, field: str) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UpstreamError(f"Could not resolve host {host!r}: {exc}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise UpstreamError(f"Host {host!r} has no address.")
    if host.lower() not in policy.allow_hosts:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            # Every answer must be public: a mixed answer is a classic rebinding trick.
            raise BadRequest(
                f"URL host {host!r} resolves to a non-public address ({refused[0]}); refused.",
                field=field,
            )
    return addresses[0]


def _open(url: str, policy: FetchPolicy, remaining: float, headers: dict[str, str] | None, field: str):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadRequest(f"Only http and https URLs are accepted, not {parts.scheme or 'none'!r}.", field=field)
    host = parts.hostname
    if not host:
        raise BadRequest("The URL has no host.", field=field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest("The URL has an invalid port.", field=field) from None
    address = _resolve_checked(host, port, policy, field)
    timeout = urllib3.Timeout(
        connect=min(policy.connect_timeout, remaining), read=min(policy.read_timeout, remaining)
    )
    common = dict(port=port, timeout=timeout, retries=False, maxsize=1)
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, server_hostname=host, assert_hostname=host, **common
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, **common)
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    response = pool.urlopen(
        "GET",
        target,
        headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "image/*", **(headers or {})},
        redirect=False,
        preload_content=False,
        decode_content=True,
    )
    return pool, response


class UpstreamStatus(UpstreamError):
    """The image host answered with an error status (kept in `upstream_status`: 404 and 410 mean
    gone, 429 and 5xx mean try again later)."""

    def __init__(self, upstream_status: int):
        super().__init__(f"The image host answered HTTP {upstream_status}.")
        self.upstream_status = upstream_status


@dataclass(frozen=True)
class Fetched:
    status: int  # 200..299, or 304 (not modified: no body) for a conditional request
    body: bytes
    headers: dict[str, str]  # the final response's, lower-cased names


def fetch_url(url: str, policy: FetchPolicy, *, field: str = "url") -> bytes:
    """Download `url` under `policy`. Raises ProblemErrors (400/413/502/504) on every failure; a
    refused address names the request's `field`."""
    return fetch(url, policy, field=field).body


def fetch(url: str, policy: FetchPolicy, headers: dict[str, str] | None = None, *, field: str = "url") -> Fetched:
    """`url` under `policy`, with extra request `headers` (e.g. If-None-Match: a 304 comes back
    as such, without a body). Raises ProblemErrors (400/413/502/504) on every failure, a refused
    address naming the request's `field`; UpstreamStatus for an error status."""
    started = time.monotonic()
    for _ in range(policy.max_redirects + 1):
        remaining = policy.deadline - (time.monotonic() - started)
        if remaining <= 0:
            raise UpstreamTimeout(f"Fetching the image took longer than {policy.deadline:g} s.")
        try:
            pool, response = _open(url, policy, remaining, headers, field)
        except (ConnectTimeoutError, ReadTimeoutError):
            raise UpstreamTimeout(f"The image host did not answer in time ({url}).") from None
        except MaxRetryError as exc:
            if isinstance(exc.reason, (ConnectTimeoutError, ReadTimeoutError)):
                raise UpstreamTimeout(f"The image host did not answer in time ({url}).") from None
            raise UpstreamError(f"Could not connect to the image host: {exc.reason}") from None
        except (NewConnectionError, SSLError, HTTPError, OSError) as exc:
            raise UpstreamError(f"Could not connect to the image host: {exc}") from None
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise UpstreamError(f"The image host answered {response.status} without a Location.")
                url = urljoin(url, location)
                continue
            answered = {k.lower(): v for k, v in response.headers.items()}
            if response.status == 304 and headers:
                return Fetched(304, b"", answered)
            if not 200 <= response.status < 300:
                raise UpstreamStatus(response.status)
            return Fetched(response.status, _read_capped(response, policy, started), answered)
        finally:
            response.release_conn()
            pool.close()
    raise UpstreamError(f"More than {policy.max_redirects} redirects; refused.")


def _read_capped(response, policy: FetchPolicy, started: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLarge(
            f"The image is {int(declared):,} bytes; the limit is {policy.max_bytes:,}."
        )
    chunks, total = [], 0
    try:
        while True:
            # read1 returns what has arrived, so a slow drip is checked against the deadline
            # on every chunk instead of blocking until a full buffer.
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise PayloadTooLarge(f"The image is larger than the {policy.max_bytes:,}-byte limit.")
            if time.monotonic() - started > policy.deadline:
                raise UpstreamTimeout(f"Fetching the image took longer than {policy.deadline:g} s.")
            chunks.append(chunk)
    except ReadTimeoutError:
        raise UpstreamTimeout("The image host stopped sending data.") from None
    except (HTTPError, OSError) as exc:
        raise UpstreamError(f"The image download failed: {exc}") from None
    return b"".join(chunks)
