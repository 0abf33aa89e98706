"""Renderers: a Program in, an image out. ``kind -> "module:Class"``; heavy imports happen when built."""

from genevolve.render.base import Renderer, RenderError, RenderResult

RENDERERS: dict[str, str] = {
    "collage": "genevolve.render.collage:CollageRenderer",
}

__all__ = ["RENDERERS", "RenderError", "RenderResult", "Renderer"]
