"""The ``search`` tool: text evidence for knowledge-anchored requests (who, what, where, when)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator

from genevolve.tools.base import Tool, ToolArgs, ToolError
from genevolve.tools.base_search import TextHit, TextSearchBackend
from genevolve.types import Observation

Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]

_KIND_TAGS = {"answer": " [direct answer]", "knowledge": " [knowledge panel]", "web": ""}


class SearchArgs(ToolArgs):
    queries: list[Query] = Field(min_length=1, max_length=5, description="1 to 5 search queries, run in parallel")
    top_k: int = Field(5, ge=1, le=10, description="results per query")

    @field_validator("queries", mode="before")
    @classmethod
    def _accept_one_string(cls, value: Any) -> Any:
        # policies often write "queries": "x"; the intent is unambiguous, so accept it
        return [value] if isinstance(value, str) else value


class SearchTool(Tool):
    """Runs each query on a ``TextSearchBackend`` and formats numbered hits (title, URL, snippet).

    One failing query does not sink the others: its section says why. Only when every query fails
    does the call raise ``ToolError`` (with the first failure's code), so the trajectory records it.
    """

    name = "search"
    description = (
        "Web text search. Use it to learn facts the request depends on: what a named person, "
        "product, place or event looks like, dates, logos, official names, exact wording."
    )
    Args = SearchArgs

    def __init__(self, backend: TextSearchBackend, *, snippet_chars: int = 400):
        self.search_backend = backend
        self.backend = backend.name or type(backend).__name__
        self.snippet_chars = snippet_chars

    async def acall(self, args: SearchArgs) -> Observation:
        queries = list(dict.fromkeys(args.queries))  # a repeated query costs a call and adds nothing
        outcomes = await asyncio.gather(
            *(self.search_backend.search(q, args.top_k) for q in queries), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ToolError):
                raise outcome  # a bug, not a tool failure
        errors = [o for o in outcomes if isinstance(o, ToolError)]
        if len(errors) == len(outcomes):
            first = errors[0]
            raise ToolError(first.code, first.message)
        sections = [
            self._section(q, o, args.top_k) for q, o in zip(queries, outcomes, strict=True)
        ]
        return Observation(text="\n\n".join(sections))

    def _section(self, query: str, outcome: list[TextHit] | BaseException, top_k: int) -> str:
        if isinstance(outcome, ToolError):
            return f'Search "{query}": failed ({outcome.code}: {outcome.message})'
        assert isinstance(outcome, list)
        hits = outcome[:top_k]
        if not hits:
            return f'Search "{query}": no results.'
        lines = [f'Search "{query}": {len(hits)} result{"s" if len(hits) != 1 else ""}']
        for i, hit in enumerate(hits, 1):
            lines.append(f"{i}. {hit.title or '(untitled)'}{_KIND_TAGS[hit.kind]}")
            if hit.url:
                lines.append(f"   URL: {hit.url}")
            snippet = trim(hit.snippet, self.snippet_chars)
            if hit.date and snippet:
                snippet = f"{hit.date} - {snippet}"
            if snippet:
                lines.append(f"   {snippet}")
        return "\n".join(lines)

    async def aclose(self) -> None:
        await self.search_backend.aclose()


def trim(text: str, limit: int) -> str:
    """Collapse whitespace and cut at a word boundary, marking the cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + " …"
