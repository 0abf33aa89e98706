"""Serper and SearXNG backends and the search / image_search tools against loopback servers.

Response bodies follow the shapes in the services' public docs (trimmed to the fields we read plus
a few we ignore, so unknown fields are proven harmless).
"""

from __future__ import annotations

import io
import logging
import time

import pytest
from PIL import Image
from pydantic import ValidationError

from genevolve.registry import build
from genevolve.tools import IMAGE_SEARCH_BACKENDS, SEARCH_BACKENDS
from genevolve.tools.base import ToolError
from genevolve.tools.base_search import ImageSearchBackend, TextHit, TextSearchBackend
from genevolve.tools.download import ImageDownloader
from genevolve.tools.image_search import ImageSearchArgs, ImageSearchTool
from genevolve.tools.search import SearchArgs, SearchTool, trim
from genevolve.tools.searxng import SearxngImageSearch, SearxngSearch
from genevolve.tools.serper import SerperImageSearch, SerperSearch
from genevolve.types import RetrievedImage
from tests.loopback_http import LoopbackServer, send_bytes, send_json, sequence, sleepy

KEY = "sk-test-5f2c9e-secret"

SERPER_SEARCH = {
    "searchParameters": {"q": "eiffel tower height", "type": "search", "engine": "google"},
    "answerBox": {"title": "Eiffel Tower / Height", "answer": "330 m", "snippet": "", "link": ""},
    "knowledgeGraph": {
        "title": "Eiffel Tower", "type": "Tower", "website": "https://www.toureiffel.paris/",
        "description": "Wrought-iron lattice tower on the Champ de Mars in Paris.",
        "descriptionSource": "Wikipedia", "descriptionLink": "https://en.wikipedia.org/wiki/Eiffel_Tower",
        "attributes": {"Height": "330 m", "Opened": "31 March 1889"},
    },
    "organic": [
        {"title": "Eiffel Tower - Wikipedia", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower",
         "snippet": "The tower is 330 metres tall, about the same height as an 81-storey building.",
         "position": 1, "sitelinks": [{"title": "History", "link": "https://x"}]},
        {"title": "Official site", "link": "https://www.toureiffel.paris/en", "snippet": "Tickets and visits.",
         "date": "Mar 3, 2026", "position": 2},
        {"title": "Third", "link": "https://example.org/3", "snippet": "x", "position": 3},
    ],
    "relatedSearches": [{"query": "eiffel tower facts"}],
}

SERPER_IMAGES = {
    "searchParameters": {"q": "red panda", "type": "images"},
    "images": [
        {"title": "Red panda in a tree", "imageUrl": "https://upload.example.org/panda.jpg", "imageWidth": 1200,
         "imageHeight": 800, "thumbnailUrl": "https://tbn.example/1", "thumbnailWidth": 275,
         "thumbnailHeight": 183, "source": "Wikipedia", "domain": "en.wikipedia.org",
         "link": "https://en.wikipedia.org/wiki/Red_panda", "googleUrl": "https://www.google.com/imgres?x",
         "position": 1},
        {"title": "inline", "imageUrl": "data:image/png;base64,AAAA", "link": "https://x", "position": 2},
        {"title": "", "source": "Zoo", "imageUrl": "https://zoo.example/p.png", "link": "https://zoo.example",
         "position": 3},
    ],
}

SEARXNG_SEARCH = {
    "query": "eiffel tower height", "number_of_results": 0,
    "results": [
        {"url": "https://en.wikipedia.org/wiki/Eiffel_Tower", "title": "Eiffel Tower",
         "content": "330 m tall lattice tower.", "engine": "duckduckgo", "parsed_url": ["https", "en.wikipedia.org"],
         "template": "default.html", "engines": ["duckduckgo", "google"], "positions": [1, 2], "score": 4.0,
         "category": "general", "publishedDate": None},
        {"title": "no url, skipped", "content": "x", "engine": "x"},
        {"url": "https://www.toureiffel.paris/en", "title": "Official", "content": "Visit.", "engine": "google",
         "publishedDate": "2026-03-03T00:00:00"},
    ],
    "answers": ["330 metres", {"answer": "1,083 ft", "url": "https://convert.example", "engine": "x"}],
    "corrections": [], "suggestions": ["eiffel tower tickets"], "unresponsive_engines": [["brave", "timeout"]],
    "infoboxes": [{"infobox": "Eiffel Tower", "id": "https://en.wikipedia.org/wiki/Eiffel_Tower",
                   "content": "Landmark in Paris.", "urls": [{"title": "Site", "url": "https://tour.example"}]}],
}


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    return KEY


def serper(server: LoopbackServer, cls=SerperSearch, **kw):
    return cls(base_url=server.url(""), timeout=kw.pop("timeout", 2.0), backoff=0.01, **kw)


def png_route(color: str):
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buf, format="PNG")
    return lambda h, _r: send_bytes(h, buf.getvalue(), "image/png")


# --------------------------------------------------------------------------- serper /search


async def test_serper_search_request_and_parse(server, key):
    server.routes["/search"] = lambda h, _r: send_json(h, SERPER_SEARCH)
    hits = await serper(server, gl="fr").search("eiffel tower height", 4)
    sent = server.requests[0]
    assert sent.method == "POST" and sent.headers["X-API-KEY"] == KEY
    assert sent.json() == {"q": "eiffel tower height", "num": 4, "gl": "fr"}
    assert [h.kind for h in hits] == ["answer", "knowledge", "web", "web"]
    assert hits[0].snippet == "330 m"
    assert "Height: 330 m" in hits[1].snippet and hits[1].url.endswith("/Eiffel_Tower")
    assert hits[3] == TextHit(title="Official site", url="https://www.toureiffel.paris/en",
                              snippet="Tickets and visits.", date="Mar 3, 2026")


async def test_serper_missing_key_sends_nothing(server, monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    with pytest.raises(ToolError) as info:
        await serper(server).search("x", 3)
    assert info.value.code == "no_api_key" and "SERPER_API_KEY" in info.value.message
    assert server.requests == []


async def test_serper_500_retried_then_reported_without_key(server, key, caplog):
    caplog.set_level(logging.DEBUG)
    # a hostile or buggy gateway that echoes the key back in its error body
    server.routes["/search"] = lambda h, r: send_json(h, {"error": f"bad {r.headers['X-API-KEY']}"}, status=500)
    with pytest.raises(ToolError) as info:
        await serper(server, retries=2).search("x", 3)
    assert info.value.code == "http_500"
    assert server.hits("/search") == 3
    assert KEY not in info.value.message and KEY not in str(info.value) and KEY not in caplog.text


async def test_serper_403_not_retried(server, key):
    server.routes["/search"] = lambda h, _r: send_json(h, {"message": "Unauthorized.", "statusCode": 403}, status=403)
    with pytest.raises(ToolError) as info:
        await serper(server, retries=2).search("x", 3)
    assert info.value.code == "http_403" and "Unauthorized" in info.value.message
    assert server.hits("/search") == 1


async def test_serper_429_then_success(server, key):
    server.routes["/search"] = sequence(
        lambda h, _r: send_bytes(h, b"slow down", "text/plain", status=429, headers={"Retry-After": "0"}),
        lambda h, _r: send_json(h, SERPER_SEARCH),
    )
    hits = await serper(server, retries=1).search("x", 10)
    assert len(hits) == 5 and server.hits("/search") == 2


async def test_serper_timeout(server, key):
    server.routes["/search"] = sleepy(1.5)
    t0 = time.monotonic()
    with pytest.raises(ToolError) as info:
        await serper(server, timeout=0.2, retries=0).search("x", 3)
    assert info.value.code == "timeout" and time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "body", [b"<html>502 Bad Gateway</html>", b"[1, 2]", b'{"message": "Not enough credits", "statusCode": 400}']
)
async def test_serper_bad_response(server, key, body):
    server.routes["/search"] = lambda h, _r: send_bytes(h, body, "application/json")
    with pytest.raises(ToolError) as info:
        await serper(server).search("x", 3)
    assert info.value.code == "bad_response"


async def test_serper_connection_refused(key):
    with LoopbackServer() as gone:
        url = gone.url("")
    with pytest.raises(ToolError) as info:
        await SerperSearch(base_url=url, retries=0).search("x", 3)
    assert info.value.code == "connection_error"


# --------------------------------------------------------------------------- serper /images


async def test_serper_images_parse(server, key):
    server.routes["/images"] = lambda h, _r: send_json(h, SERPER_IMAGES)
    images = await serper(server, SerperImageSearch).search("red panda", 5)
    assert server.requests[0].json() == {"q": "red panda", "num": 5}
    assert images == [
        RetrievedImage(title="Red panda in a tree", url="https://upload.example.org/panda.jpg",
                       page_url="https://en.wikipedia.org/wiki/Red_panda", query="red panda"),
        RetrievedImage(title="Zoo", url="https://zoo.example/p.png", page_url="https://zoo.example",
                       query="red panda"),
    ]


# --------------------------------------------------------------------------- searxng


async def test_searxng_search_request_and_parse(server):
    server.routes["/search"] = lambda h, _r: send_json(h, SEARXNG_SEARCH)
    backend = SearxngSearch(base_url=server.url(""), language="en", backoff=0.01)
    hits = await backend.search("eiffel tower height", 10)
    sent = server.requests[0]
    assert sent.method == "GET"
    assert {k: v[0] for k, v in sent.query.items()} == {
        "q": "eiffel tower height", "format": "json", "categories": "general", "pageno": "1",
        "safesearch": "1", "language": "en",
    }
    assert [h.kind for h in hits] == ["answer", "answer", "knowledge", "web", "web"]
    assert hits[1].snippet == "1,083 ft" and hits[1].url == "https://convert.example"
    assert hits[4].date == "2026-03-03T00:00:00" and hits[3].date == ""
    assert len(await backend.search("x", 2)) == 2


async def test_searxng_json_disabled_hint(server):
    server.routes["/search"] = lambda h, _r: send_bytes(h, b"Forbidden", "text/html", status=403)
    with pytest.raises(ToolError) as info:
        await SearxngSearch(base_url=server.url("")).search("x", 3)
    assert info.value.code == "http_403" and "search.formats" in info.value.message


async def test_searxng_without_results_list_is_bad_response(server):
    server.routes["/search"] = lambda h, _r: send_json(h, {"query": "x"})
    with pytest.raises(ToolError) as info:
        await SearxngSearch(base_url=server.url("")).search("x", 3)
    assert info.value.code == "bad_response"


async def test_searxng_images(server, monkeypatch):
    monkeypatch.setenv("SEARXNG_URL", server.url(""))  # base_url from the environment
    server.routes["/search"] = lambda h, _r: send_json(h, {"query": "q", "results": [
        {"url": "https://page.example/1", "title": "One", "img_src": "//cdn.example/1.jpg",
         "thumbnail_src": "https://t/1", "template": "images.html", "engine": "bing images"},
        {"url": "https://page.example/2", "title": "No image", "template": "images.html"},
        {"url": "https://page.example/3", "title": "Three", "img_src": "https://cdn.example/3.png"},
    ]})
    images = await SearxngImageSearch().search("q", 5)
    assert server.requests[0].query["categories"] == ["images"]
    assert [(i.url, i.page_url) for i in images] == [
        ("https://cdn.example/1.jpg", "https://page.example/1"), ("https://cdn.example/3.png", "https://page.example/3")
    ]


def test_backend_tables_build_every_kind():
    for table, base in ((SEARCH_BACKENDS, TextSearchBackend), (IMAGE_SEARCH_BACKENDS, ImageSearchBackend)):
        for kind in ("serper", "searxng"):
            backend = build(table, kind, "search", base_url="http://127.0.0.1:9")
            assert isinstance(backend, base) and backend.name == kind


# --------------------------------------------------------------------------- search tool


async def test_search_tool_formats_and_survives_one_failed_query(server, key):
    def route(h, r):
        if r.json()["q"] == "boom":
            send_json(h, {"error": "x"}, status=500)
        else:
            send_json(h, SERPER_SEARCH)

    server.routes["/search"] = route
    tool = SearchTool(serper(server, retries=0), snippet_chars=40)
    obs = await tool.acall(SearchArgs(queries=["eiffel tower height", "boom", "eiffel tower height"], top_k=3))
    text = obs.text
    assert server.hits("/search") == 2  # the repeated query ran once
    assert 'Search "eiffel tower height": 3 results' in text
    assert "1. Eiffel Tower / Height [direct answer]" in text
    assert "2. Eiffel Tower [knowledge panel]" in text
    assert "   URL: https://en.wikipedia.org/wiki/Eiffel_Tower" in text
    assert 'Search "boom": failed (http_500' in text
    assert obs.error is None and tool.backend == "serper"


async def test_search_tool_all_queries_failing_raises(server, key):
    server.routes["/search"] = sleepy(1.0)
    tool = SearchTool(serper(server, timeout=0.2, retries=0))
    with pytest.raises(ToolError) as info:
        await tool.acall(SearchArgs(queries=["a", "b"]))
    assert info.value.code == "timeout"


async def test_search_tool_no_results(server, key):
    server.routes["/search"] = lambda h, _r: send_json(h, {"organic": []})
    obs = await SearchTool(serper(server)).acall(SearchArgs(queries="nothing"))
    assert obs.text == 'Search "nothing": no results.'


def test_search_args_validation():
    assert SearchArgs.model_validate({"queries": "  one  "}).queries == ["one"]
    for bad in ({"queries": []}, {"queries": ["a"] * 6}, {"queries": [" "]}, {"queries": ["a"], "top_k": 11},
                {"queries": ["a"], "top_k": 0}, {"queries": ["a"], "extra": 1}, {"queries": ["x" * 301]}):
        with pytest.raises(ValidationError):
            SearchArgs.model_validate(bad)


def test_trim():
    assert trim("a  b\n c", 10) == "a b c"
    assert trim("alpha beta gamma delta", 12) == "alpha beta …"
    assert len(trim("x" * 1000, 400)) <= 402


# --------------------------------------------------------------------------- image_search tool


def image_server_routes(server: LoopbackServer, n_good: int, bad: dict[int, str]):
    """Serper /images answering with loopback image URLs; positions in ``bad`` fail as named."""
    urls = []
    for i in range(n_good + len(bad)):
        path = f"/img/{i}"
        kind = bad.get(i)
        if kind == "html":
            server.routes[path] = lambda h, _r: send_bytes(h, b"<html></html>", "text/html")
        elif kind != "404":
            server.routes[path] = png_route(("red", "green", "blue", "white", "black", "gray", "cyan", "pink")[i % 8])
        urls.append(server.url(path))
    payload = {"images": [{"title": f"img {i}", "imageUrl": u, "link": f"https://page/{i}"} for i, u in enumerate(urls)]}
    server.routes["/images"] = lambda h, r: send_json(h, {"images": payload["images"][: r.json()["num"]]})


@pytest.fixture
def downloader(tmp_path):
    return ImageDownloader(tmp_path / "images", allow_private=True, retries=0, timeout=2.0)


async def test_image_search_drops_failures_and_uses_spares(server, key, downloader):
    image_server_routes(server, n_good=4, bad={1: "html", 2: "404"})
    tool = ImageSearchTool(serper(server, SerperImageSearch), downloader, spare=3)
    obs = await tool.acall(ImageSearchArgs(query="  red panda ", top_k=3))
    assert obs.text == '3 images for "red panda" (2 more could not be downloaded and were skipped).'
    assert [i.title for i in obs.images] == ["img 0", "img 3", "img 4"]
    assert all(i.path and i.img_id == "" and i.error is None and i.query == "red panda" for i in obs.images)
    assert server.requests[0].json()["num"] == 6
    assert server.hits("/img/5") == 0  # spares are fetched only to replace failures


async def test_image_search_keep_failed(server, key, downloader):
    image_server_routes(server, n_good=2, bad={1: "html"})
    tool = ImageSearchTool(serper(server, SerperImageSearch), downloader, keep_failed=True)
    obs = await tool.acall(ImageSearchArgs(query="q", top_k=3))
    assert [i.path is None for i in obs.images] == [False, True, False]
    assert obs.images[1].error.startswith("download_failed: not_an_image")
    assert "1 more could not be downloaded and cannot be used" in obs.text


async def test_image_search_all_downloads_fail(server, key, downloader):
    image_server_routes(server, n_good=0, bad={0: "html", 1: "404", 2: "404"})
    obs = await ImageSearchTool(serper(server, SerperImageSearch), downloader).acall(ImageSearchArgs(query="q"))
    assert obs.error == "download_failed" and obs.images == []
    assert "3 results could not be downloaded (http_404 x2, not_an_image x1)" in obs.text


async def test_image_search_no_hits_and_backend_errors(server, key, downloader):
    server.routes["/images"] = lambda h, _r: send_json(h, {"images": []})
    tool = ImageSearchTool(serper(server, SerperImageSearch), downloader)
    assert (await tool.acall(ImageSearchArgs(query="q"))).text == 'No images found for "q".'
    server.routes["/images"] = lambda h, _r: send_json(h, {}, status=500)
    with pytest.raises(ToolError):
        await ImageSearchTool(serper(server, SerperImageSearch, retries=0), downloader).acall(
            ImageSearchArgs(query="q"))


async def test_image_search_passes_local_paths_through(tmp_path):
    class Library(ImageSearchBackend):
        name = "library"

        async def search(self, query, top_k):
            return [RetrievedImage(title="local", path=str(tmp_path / "a.png"), img_id="IMG_999")]

    obs = await ImageSearchTool(Library(), ImageDownloader(tmp_path)).acall(ImageSearchArgs(query="q", top_k=1))
    assert obs.images[0].path == str(tmp_path / "a.png") and obs.images[0].img_id == ""
    assert obs.images[0].query == "q"


def test_image_search_args_validation():
    for bad in ({"query": ""}, {"query": "q", "top_k": 11}, {"query": "x" * 301}, {"queries": ["q"]}):
        with pytest.raises(ValidationError):
            ImageSearchArgs.model_validate(bad)
