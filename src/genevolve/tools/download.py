"""A safe image downloader shared by every web image backend.

URLs come from search engines, i.e. from the open web, and the policy chooses among them, so each
fetch is treated as hostile input:

- only ``http``/``https``; every hop's host is resolved and refused when any address is private,
  loopback, link-local, multicast, reserved or otherwise not global (cloud metadata endpoints,
  the local network); redirects are followed by hand, at most ``max_redirects``, with the same check;
- a byte cap (``Content-Length`` first, then while streaming) and a whole-fetch deadline;
- ``Content-Type`` must be ``image/*``; the bytes must then decode with Pillow, restricted to common
  raster formats (Pillow's EPS plugin would run Ghostscript), with a pixel cap against
  decompression bombs checked before any pixel data is decoded;
- files are content-addressed (``<sha256>.<ext>``, the extension from the decoded format), so
  nothing from the URL or a header ever becomes part of a path; a URL -> file index lets a repeat
  fetch skip the network.

Residual risk, accepted: the address check resolves the name before httpx connects, and httpx
resolves again, so a DNS-rebinding server could answer differently in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import json
import re
import socket
import threading
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import httpx

from genevolve.cache import cache_root
from genevolve.tools._http import LoopClient, retry_delay
from genevolve.tools.base import ToolError

#: decoded format -> file extension; anything else is refused
FORMAT_EXTENSIONS = {
    "PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "GIF": ".gif",
    "BMP": ".bmp", "TIFF": ".tif", "AVIF": ".avif",
}
_CACHE_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z]{3,4}$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_CODES = frozenset({"timeout", "connection_error"} | {f"http_{s}" for s in _RETRY_STATUSES})
# warnings.catch_warnings mutates process-wide state; decoding threads take turns under this lock
_DECODE_LOCK = threading.Lock()


class DownloadError(ToolError):
    """A URL that could not be turned into a usable local image. ``code`` names why:
    ``bad_url``, ``bad_scheme``, ``dns_failed``, ``private_address``, ``too_many_redirects``,
    ``http_<status>``, ``timeout``, ``connection_error``, ``not_an_image``, ``too_large``,
    ``decode_failed``, ``bomb``."""


def default_cache_dir() -> Path:
    """``<genevolve cache root>/downloads`` (``$GENEVOLVE_CACHE`` moves it, see ``genevolve.cache``)."""
    return cache_root() / "downloads"


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses (IPv6 forms that embed IPv4 are unwrapped)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
    bad = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    bad = bad or ip.is_reserved or ip.is_unspecified
    return ip.is_global and not bad


def check_image(data: bytes, max_pixels: int) -> str:
    """Decode ``data`` fully and return its Pillow format name, or raise ``DownloadError``.

    Runs in a worker thread. ``verify()`` catches truncation and bad checksums but leaves the image
    unusable, hence the second open and ``load()``.
    """
    from PIL import Image  # Pillow is a core dependency; imported here to keep tool imports light

    Image.init()
    formats = [f for f in FORMAT_EXTENSIONS if f in Image.OPEN]
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=formats) as img:
                fmt = img.format or ""
                width, height = img.size
                if width * height > max_pixels:
                    raise DownloadError("bomb", f"image is {width}x{height}, over the {max_pixels:,} pixel cap")
                img.verify()
            with Image.open(io.BytesIO(data), formats=formats) as img:
                img.load()
        except DownloadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DownloadError("bomb", "image dimensions look like a decompression bomb") from exc
        except Exception as exc:  # untrusted bytes: Pillow raises many types for corrupt input
            raise DownloadError("decode_failed", f"bytes do not decode as an image ({type(exc).__name__})") from exc
    if fmt not in FORMAT_EXTENSIONS:
        raise DownloadError("decode_failed", f"unsupported image format {fmt!r}")
    return fmt


class ImageDownloader:
    """Fetch image URLs into a content-addressed cache. ``await fetch(url) -> Path``.

    ``allow_private`` switches the address check off (tests with loopback servers, trusted
    intranets); ``trusted_hosts`` exempts named hosts only (e.g. a local image mirror).
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        *,
        max_bytes: int = 20 * 1024 * 1024,
        max_pixels: int = 40_000_000,
        timeout: float = 20.0,
        retries: int = 1,
        backoff: float = 0.5,
        max_redirects: int = 5,
        allow_private: bool = False,
        trusted_hosts: Iterable[str] = (),
        max_concurrency: int = 8,
        user_agent: str = "genevolve/0.1 (reference image fetcher)",
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.trusted_hosts = frozenset(h.lower() for h in trusted_hosts)
        self.max_concurrency = max_concurrency
        headers = {"User-Agent": user_agent, "Accept": "image/*"}
        self._http = LoopClient(timeout=timeout, follow_redirects=False, headers=headers)
        self._index: dict[str, str] | None = None
        self._semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    # ------------------------------------------------------------------ public

    async def fetch(self, url: str) -> Path:
        """The local path of a verified image for ``url``; raises ``DownloadError``."""
        if (cached := self.cached(url)) is not None:
            return cached
        async with self._semaphore():
            data = await self._download_with_retry(url)
        fmt = await asyncio.to_thread(check_image, data, self.max_pixels)
        path = self._store(data, FORMAT_EXTENSIONS[fmt])
        self._remember(url, path.name)
        return path

    def cached(self, url: str) -> Path | None:
        """The cached file for ``url``, if an earlier fetch stored one that still exists."""
        name = self._load_index().get(url)
        if name and _CACHE_NAME.match(name) and (path := self.cache_dir / name).is_file():
            return path
        return None

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ network

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores = {loop: asyncio.Semaphore(self.max_concurrency)}
        return self._semaphores[loop]

    async def _download_with_retry(self, url: str) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._download(url)
            except (TimeoutError, httpx.TimeoutException):
                error = DownloadError("timeout", f"no complete image within {self.timeout:g} s")
            except httpx.TransportError as exc:
                error = DownloadError("connection_error", f"cannot fetch ({type(exc).__name__})")
            except DownloadError as exc:
                error = exc
            if error.code not in _RETRY_CODES or attempt == self.retries:
                raise error
            await asyncio.sleep(retry_delay(attempt, self.backoff))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _download(self, url: str) -> bytes:
        client = self._http.get()
        for _hop in range(self.max_redirects + 1):
            target = await self._check_url(url)
            async with client.stream("GET", target) as response:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise DownloadError(f"http_{response.status_code}", "redirect without a Location")
                    url = str(target.join(location))
                    continue
                if response.status_code >= 400:
                    raise DownloadError(f"http_{response.status_code}", f"server answered HTTP {response.status_code}")
                return await self._read_image_body(response)
        raise DownloadError("too_many_redirects", f"more than {self.max_redirects} redirects")

    async def _read_image_body(self, response: httpx.Response) -> bytes:
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            raise DownloadError("not_an_image", f"server sent {ctype or 'no content type'}, not an image")
        limit = f"the {self.max_bytes / 2**20:g} MB cap"
        try:
            declared = int(response.headers.get("content-length", ""))
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            raise DownloadError("too_large", f"declared size {declared:,} bytes is over {limit}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self.max_bytes:
                raise DownloadError("too_large", f"body is over {limit}")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _check_url(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise DownloadError("bad_url", "not a valid URL") from exc
        if parsed.scheme not in ("http", "https"):
            raise DownloadError("bad_scheme", f"scheme {parsed.scheme!r} is not http or https")
        host = parsed.raw_host.decode("ascii")  # IDNA-encoded, the form the resolver expects
        if not host:
            raise DownloadError("bad_url", "URL has no host")
        if self.allow_private or host in self.trusted_hosts or parsed.host in self.trusted_hosts:
            return parsed
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise DownloadError("dns_failed", f"cannot resolve {host!r}") from exc
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not is_public_address(address):
                raise DownloadError("private_address", f"refusing {host!r}: it resolves to a non-public address")
        return parsed

    # ------------------------------------------------------------------ cache

    def _store(self, data: bytes, extension: str) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / (hashlib.sha256(data).hexdigest() + extension)
        if not path.is_file():
            tmp = self.cache_dir / f".{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: readers never see half a file
        return path

    @property
    def _index_path(self) -> Path:
        return self.cache_dir / "index.jsonl"

    def _load_index(self) -> dict[str, str]:
        if self._index is None:
            self._index = {}
            if self._index_path.is_file():
                for line in self._index_path.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                        self._index[str(entry["url"])] = str(entry["file"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line after a crash costs one cache miss
        return self._index

    def _remember(self, url: str, name: str) -> None:
        index = self._load_index()
        if index.get(url) == name:
            return
        index[url] = name
        # append-only: concurrent processes sharing a cache interleave whole lines
        with self._index_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"url": url, "file": name}, ensure_ascii=False) + "\n")
