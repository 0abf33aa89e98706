"""Turn lists -> chat messages for the policy backends.

A :class:`~genevolve.types.Turn` marks each of its images with ``<image>`` in ``content``, in the
order of ``turn.images`` (paths or URLs). Backends need one of three shapes:

- text-only policies: plain string content with the placeholders removed; the agent already lists
  every image as a text line (``IMG_001: title``), so nothing is lost that the model could read;
- OpenAI-compatible VLMs: content parts ``{"type": "text"}`` / ``{"type": "image_url"}``, local files
  inlined as data URLs (servers cannot read our disk), http(s) URLs passed through;
- HF processors: content parts ``{"type": "text"}`` / ``{"type": "image"}`` plus the PIL images in
  the same order, which ``processor(text=..., images=...)`` pairs with the image tokens.

Images are downscaled to a long side of ``max_side`` pixels: rollouts resend every image at every
round, and a VLM's image token count grows with pixel count.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genevolve.types import IMAGE_PLACEHOLDER, Turn

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_MAX_SIDE = 1024
_PLACEHOLDER_ONLY_LINE = re.compile(rf"^[ \t]*(?:{re.escape(IMAGE_PLACEHOLDER)}[ \t]*)+\n?", re.MULTILINE)
_PLACEHOLDER = re.compile(rf"[ \t]*{re.escape(IMAGE_PLACEHOLDER)}")


def strip_placeholders(text: str) -> str:
    """Remove ``<image>`` markers: whole lines that held only markers, else the marker and the blanks before it."""
    return _PLACEHOLDER.sub("", _PLACEHOLDER_ONLY_LINE.sub("", text))


def visible_images(turns: list[Turn], budget: int | None) -> list[Turn]:
    """The turns as a policy is shown them: only the newest ``budget`` images stay attached; older ones
    lose their placeholder (their text lines stay). The agent builds every policy call's context with
    this, and the learner's token view rebuilds each turn's context with it, so both see the same images.
    ``None``: no limit."""
    if budget is None:
        return list(turns)
    out: list[Turn] = []
    for turn in reversed(turns):
        if turn.images and len(turn.images) > budget:
            keep = max(budget, 0)
            content = _drop_placeholders(turn.content, len(turn.images) - keep)
            turn = turn.model_copy(update={"content": content, "images": turn.images[len(turn.images) - keep:]})
        budget -= len(turn.images)
        out.append(turn)
    return out[::-1]


def _drop_placeholders(content: str, n: int) -> str:
    """Remove the first ``n`` image placeholders (and the space before each)."""
    for _ in range(n):
        i = content.find(IMAGE_PLACEHOLDER)
        if i < 0:
            break
        start = i - 1 if i > 0 and content[i - 1] == " " else i
        content = content[:start] + content[i + len(IMAGE_PLACEHOLDER):]
    return content


def _is_remote(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "data:"))


def _local_path(ref: str) -> Path:
    return Path(ref.removeprefix("file://"))


def _checked_path(ref: str) -> Path:
    path = _local_path(ref)
    if not path.is_file():
        raise FileNotFoundError(
            f"image {ref!r} referenced by a turn does not exist (expected a local file or URL)"
        )
    return path


def _has_alpha(img: Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _prepare(img: Image, max_side: int) -> Image:
    """Upright (EXIF) and no larger than ``max_side`` on its long side."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # always a copy, so callers may close the source
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    return img


def encode_image(path: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> tuple[bytes, str]:
    """Return ``(bytes, mime)`` for a local image, re-encoded only when needed.

    JPEG/PNG files already within ``max_side`` are sent as they are (no generation loss); others are
    re-encoded: PNG when they carry transparency (emoji sprites), JPEG q90 otherwise (photos).
    """
    from PIL import Image as PILImage

    path = Path(path)
    with PILImage.open(path) as src:
        fmt = src.format
        if fmt in ("JPEG", "PNG") and max(src.size) <= max_side and src.getexif().get(0x0112, 1) == 1:
            return path.read_bytes(), f"image/{fmt.lower()}"
        img = _prepare(src, max_side)
        buf = io.BytesIO()
        if _has_alpha(img):
            img.convert("RGBA").save(buf, format="PNG")
            return buf.getvalue(), "image/png"
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"


@functools.lru_cache(maxsize=128)
def _data_url_cached(path: str, mtime_ns: int, size: int, max_side: int) -> str:
    data, mime = encode_image(path, max_side)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_url(ref: str, max_side: int = DEFAULT_MAX_SIDE) -> str:
    """A URL an OpenAI-compatible server can fetch: remote URLs as given, local files as data URLs.

    Cached by (path, mtime, size): the same references are resent at every ReAct round.
    """
    if _is_remote(ref):
        return ref
    path = _checked_path(ref)
    st = path.stat()
    return _data_url_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, max_side)


def load_image(ref: str, max_side: int = DEFAULT_MAX_SIDE, timeout: float = 30.0) -> Image:
    """An RGB PIL image from a path, ``file://``, ``data:`` or http(s) URL, capped at ``max_side``.

    Transparent pixels are composited on white: processors expect RGB, and a plain ``convert("RGB")``
    would show whatever colour the transparent pixels happen to store (often black).
    """
    from PIL import Image as PILImage

    if ref.startswith("data:"):
        raw = base64.b64decode(ref.partition(",")[2])
    elif ref.startswith(("http://", "https://")):
        import httpx

        resp = httpx.get(ref, timeout=timeout, follow_redirects=True)
        resp.raise_for_status()
        raw = resp.content
    else:
        raw = _checked_path(ref).read_bytes()
    with PILImage.open(io.BytesIO(raw)) as src:
        img = _prepare(src, max_side)
        if _has_alpha(img):
            rgba = img.convert("RGBA")
            canvas = PILImage.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return img.convert("RGB")


def _split(turn: Turn) -> list[str]:
    """Text around the placeholders: ``len(turn.images) + 1`` pieces."""
    return turn.content.split(IMAGE_PLACEHOLDER)


def to_openai_messages(
    turns: list[Turn], *, accepts_images: bool, max_side: int = DEFAULT_MAX_SIDE
) -> list[dict[str, Any]]:
    """Chat Completions messages. Turns without images keep plain string content even for VLMs,
    which every OpenAI-compatible server accepts (some reject part lists on system/assistant turns)."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if not accepts_images or not turn.images:
            messages.append({"role": turn.role, "content": strip_placeholders(turn.content)})
            continue
        parts: list[dict[str, Any]] = []
        pieces = _split(turn)
        for i, text in enumerate(pieces):
            if text:
                parts.append({"type": "text", "text": text})
            if i < len(turn.images):
                parts.append({"type": "image_url", "image_url": {"url": image_url(turn.images[i], max_side)}})
        messages.append({"role": turn.role, "content": parts})
    return messages


def to_hf_messages(
    turns: list[Turn], *, accepts_images: bool, max_side: int = DEFAULT_MAX_SIDE
) -> tuple[list[dict[str, Any]], list[Image]]:
    """Messages for ``apply_chat_template`` and the PIL images in placeholder order.

    For VLMs every message uses a part list, since multimodal chat templates iterate over parts;
    text-only tokenizers get plain strings.
    """
    if not accepts_images:
        return [{"role": t.role, "content": strip_placeholders(t.content)} for t in turns], []
    messages: list[dict[str, Any]] = []
    images: list[Image] = []
    for turn in turns:
        parts: list[dict[str, Any]] = []
        for i, text in enumerate(_split(turn)):
            if text:
                parts.append({"type": "text", "text": text})
            if i < len(turn.images):
                parts.append({"type": "image"})
                images.append(load_image(turn.images[i], max_side))
        messages.append({"role": turn.role, "content": parts})
    return messages, images
