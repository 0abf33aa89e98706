"""The renderer interface: a Program (prompt + reference image paths) in, an image and metadata out.

A minimal implementation::

    class Blank(Renderer):
        name = "blank"
        async def arender(self, program, *, seed=0):
            return RenderResult(image=Image.new("RGB", (512, 512), "white"), meta={"seed": seed})

``RenderError`` is an expected failure (server error, refused content, unreadable reference): the
caller records it as a protocol failure (reward 0). Bugs raise.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from genevolve.types import Program


class RenderError(RuntimeError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RenderResult:
    image: Image.Image
    #: what the renderer did: seed, size, model, and for the collage renderer the manifest of what it drew
    meta: dict[str, Any] = field(default_factory=dict)


class Renderer(ABC):
    name: str = "renderer"

    @abstractmethod
    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        """Render ``program``; reference images are read from ``program.references[i].path``."""

    def render(self, program: Program, *, seed: int = 0) -> RenderResult:
        return asyncio.run(self.arender(program, seed=seed))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release models or connections."""
