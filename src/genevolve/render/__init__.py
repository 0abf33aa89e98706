"""Renderers: a Program in, an image out. ``kind -> "module:Class"``; heavy imports happen when built."""

from genevolve.render.base import Renderer, RenderError, RenderResult

RENDERERS: dict[str, str] = {
    "collage": "genevolve.render.collage:CollageRenderer",
    "qwen_image_edit": "genevolve.render.diffusers_backend:QwenImageEditRenderer",
    "flux_kontext": "genevolve.render.diffusers_backend:FluxKontextRenderer",
    "http": "genevolve.render.http_service:HTTPRenderer",
    "gemini": "genevolve.render.gemini:GeminiRenderer",
    "openai-images": "genevolve.render.openai_images:OpenAIImagesRenderer",
}

__all__ = ["RENDERERS", "RenderError", "RenderResult", "Renderer"]
