"""ImageDownloader against a real loopback HTTP server: caps, checks, redirects and the cache."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import struct
import time
import zlib

import pytest
from PIL import Image

from genevolve.tools.base import ToolError
from genevolve.tools.download import DownloadError, ImageDownloader, check_image, is_public_address
from tests.loopback_http import LoopbackServer, redirect, send_bytes, sequence, sleepy

MB = 1024 * 1024


def png_bytes(size: tuple[int, int] = (8, 6), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buf, format="JPEG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims huge dimensions (a decompression bomb)."""
    data = bytearray(png_bytes((1, 1)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width/height follow signature + length + tag
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def image_route(data: bytes, content_type: str = "image/png"):
    return lambda h, _r: send_bytes(h, data, content_type)


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def downloader(tmp_path):
    return ImageDownloader(tmp_path / "cache", allow_private=True, timeout=2.0, backoff=0.01)


async def fetch_error(d: ImageDownloader, url: str) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        await d.fetch(url)
    assert isinstance(info.value, ToolError)
    return info.value


# --------------------------------------------------------------------------- success and cache


async def test_fetch_stores_content_addressed_file(server, downloader):
    data = png_bytes()
    server.routes["/a.png"] = image_route(data)
    path = await downloader.fetch(server.url("/a.png"))
    assert path.name == hashlib.sha256(data).hexdigest() + ".png"
    assert path.parent == downloader.cache_dir
    assert path.read_bytes() == data


async def test_extension_comes_from_decoded_format_not_url(server, downloader):
    data = jpeg_bytes()
    server.routes["/photo.png"] = image_route(data, "image/jpeg; charset=binary")
    path = await downloader.fetch(server.url("/photo.png?name=../../evil.sh"))
    assert path.name == hashlib.sha256(data).hexdigest() + ".jpg"


async def test_repeat_fetch_hits_cache_without_http(server, downloader, tmp_path):
    server.routes["/a.png"] = image_route(png_bytes())
    url = server.url("/a.png")
    first = await downloader.fetch(url)
    second = await downloader.fetch(url)
    assert first == second and server.hits("/a.png") == 1
    fresh = ImageDownloader(downloader.cache_dir, allow_private=True)  # the index persists on disk
    assert await fresh.fetch(url) == first and server.hits("/a.png") == 1


async def test_same_bytes_at_two_urls_share_one_file(server, downloader):
    data = png_bytes()
    server.routes["/x.png"] = image_route(data)
    server.routes["/y.png"] = image_route(data)
    assert await downloader.fetch(server.url("/x.png")) == await downloader.fetch(server.url("/y.png"))
    assert len(list(downloader.cache_dir.glob("*.png"))) == 1


async def test_torn_index_line_is_ignored(server, downloader):
    server.routes["/a.png"] = image_route(png_bytes())
    await downloader.fetch(server.url("/a.png"))
    with (downloader.cache_dir / "index.jsonl").open("a") as fh:
        fh.write('{"url": "http://x", "fi')
    fresh = ImageDownloader(downloader.cache_dir, allow_private=True)
    assert fresh.cached(server.url("/a.png")) is not None
    assert fresh.cached("http://x") is None


# --------------------------------------------------------------------------- content checks


async def test_html_served_as_page_is_not_an_image(server, downloader):
    server.routes["/page"] = image_route(b"<html><body>hi</body></html>", "text/html; charset=utf-8")
    assert (await fetch_error(downloader, server.url("/page"))).code == "not_an_image"


async def test_html_served_with_image_type_fails_decode(server, downloader):
    server.routes["/fake.png"] = image_route(b"<html><body>hi</body></html>", "image/png")
    assert (await fetch_error(downloader, server.url("/fake.png"))).code == "decode_failed"


async def test_truncated_png_fails_decode(server, downloader):
    data = png_bytes((64, 64))
    server.routes["/cut.png"] = image_route(data[: len(data) // 2])
    assert (await fetch_error(downloader, server.url("/cut.png"))).code == "decode_failed"


async def test_advertised_100mb_is_refused_before_reading(server, downloader):
    def huge(h, _r):
        send_bytes(h, b"\0" * 1024, "image/png", length=100 * MB)

    server.routes["/huge.png"] = huge
    t0 = time.monotonic()
    err = await fetch_error(downloader, server.url("/huge.png"))
    assert err.code == "too_large" and time.monotonic() - t0 < 2


async def test_streamed_100mb_without_length_is_cut_at_cap(server, downloader):
    def stream(h, _r):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.end_headers()  # HTTP/1.0, no Content-Length: the body runs until the connection closes
        chunk = b"\0" * MB
        for _ in range(100):
            h.wfile.write(chunk)

    server.routes["/stream.png"] = stream
    err = await fetch_error(downloader, server.url("/stream.png"))
    assert err.code == "too_large"


@pytest.mark.parametrize(
    ("width", "height"),
    [(8000, 8000), (10_000, 10_000), (20_000, 20_000)],
    ids=["over-our-cap", "pillow-warning", "pillow-error"],
)
async def test_decompression_bomb(server, downloader, width, height):
    server.routes["/bomb.png"] = image_route(png_claiming(width, height))
    assert (await fetch_error(downloader, server.url("/bomb.png"))).code == "bomb"


def test_check_image_accepts_real_images_and_refuses_eps():
    assert check_image(png_bytes(), 1000) == "PNG"
    assert check_image(jpeg_bytes(), 1000) == "JPEG"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(DownloadError) as info:
        check_image(eps, 1000)  # Pillow's EPS plugin would call Ghostscript: never offered
    assert info.value.code == "decode_failed"


# --------------------------------------------------------------------------- HTTP errors, timeouts


async def test_404_is_not_retried(server, downloader):
    assert (await fetch_error(downloader, server.url("/missing.png"))).code == "http_404"
    assert server.hits("/missing.png") == 1


async def test_503_is_retried(server, downloader):
    data = png_bytes()
    server.routes["/flaky.png"] = sequence(
        lambda h, _r: send_bytes(h, b"busy", "text/plain", status=503), image_route(data)
    )
    assert (await downloader.fetch(server.url("/flaky.png"))).read_bytes() == data
    assert server.hits("/flaky.png") == 2


async def test_slow_server_times_out(server, tmp_path):
    d = ImageDownloader(tmp_path, allow_private=True, timeout=0.3, retries=0)
    server.routes["/slow.png"] = sleepy(1.5, image_route(png_bytes()))
    t0 = time.monotonic()
    assert (await fetch_error(d, server.url("/slow.png"))).code == "timeout"
    assert time.monotonic() - t0 < 1.2


async def test_trickling_body_hits_whole_fetch_deadline(server, tmp_path):
    d = ImageDownloader(tmp_path, allow_private=True, timeout=0.5, retries=0)

    def trickle(h, _r):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.end_headers()
        for _ in range(40):
            h.wfile.write(b"\0")
            h.wfile.flush()
            time.sleep(0.05)

    server.routes["/trickle.png"] = trickle
    assert (await fetch_error(d, server.url("/trickle.png"))).code == "timeout"


# --------------------------------------------------------------------------- addresses, schemes, redirects


async def test_loopback_refused_without_allow_private(server, tmp_path):
    server.routes["/a.png"] = image_route(png_bytes())
    d = ImageDownloader(tmp_path)
    for url in (server.url("/a.png"), f"http://localhost:{server.port}/a.png"):
        assert (await fetch_error(d, url)).code == "private_address"
    assert server.hits("/a.png") == 0


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]/x.png",
     "http://0.0.0.0/x.png", "http://[::ffff:192.168.0.1]/x.png", "http://224.0.0.1/x.png"],
)
async def test_private_literals_refused(tmp_path, url):
    assert (await fetch_error(ImageDownloader(tmp_path), url)).code == "private_address"


@pytest.mark.parametrize("url", ["ftp://example.org/a.png", "file:///etc/passwd", "data:image/png;base64,AA"])
async def test_bad_scheme(tmp_path, url):
    assert (await fetch_error(ImageDownloader(tmp_path), url)).code == "bad_scheme"


async def test_redirect_to_private_address_refused(server, tmp_path):
    # the first hop is trusted by name; where it redirects is checked like any other URL
    d = ImageDownloader(tmp_path, trusted_hosts=["127.0.0.1"])
    server.routes["/img.png"] = image_route(png_bytes())
    server.routes["/meta"] = lambda h, _r: redirect(h, "http://169.254.169.254/latest/meta-data/")
    server.routes["/local"] = lambda h, _r: redirect(h, f"http://localhost:{server.port}/img.png")
    assert (await fetch_error(d, server.url("/meta"))).code == "private_address"
    assert (await fetch_error(d, server.url("/local"))).code == "private_address"
    assert server.hits("/img.png") == 0


async def test_redirect_to_bad_scheme_refused(server, downloader):
    server.routes["/r"] = lambda h, _r: redirect(h, "file:///etc/passwd")
    assert (await fetch_error(downloader, server.url("/r"))).code == "bad_scheme"


async def test_relative_redirect_chain_followed(server, downloader):
    data = png_bytes()
    server.routes["/r1"] = lambda h, _r: redirect(h, "/r2", 301)
    server.routes["/r2"] = lambda h, _r: redirect(h, server.url("/img.png"), 307)
    server.routes["/img.png"] = image_route(data)
    assert (await downloader.fetch(server.url("/r1"))).read_bytes() == data


async def test_redirect_loop_stops(server, downloader):
    server.routes["/loop"] = lambda h, _r: redirect(h, "/loop")
    assert (await fetch_error(downloader, server.url("/loop"))).code == "too_many_redirects"
    assert server.hits("/loop") == downloader.max_redirects + 1


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2606:4700:4700::1111", True), ("10.1.2.3", False), ("127.0.0.1", False),
     ("169.254.169.254", False), ("100.64.0.1", False), ("224.0.0.251", False), ("239.1.1.1", False),
     ("0.0.0.0", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:10.0.0.1", False),
     ("2002:0a00:0001::1", False), ("240.0.0.1", False)],
)
def test_is_public_address(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public
