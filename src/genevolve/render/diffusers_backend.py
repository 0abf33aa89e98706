"""Local diffusion renderers through 🤗 diffusers: Qwen-Image-Edit-2511 (the paper's G) and FLUX.1 Kontext.

Both take the program's reference images as conditioning and its ``gen_prompt`` as the instruction.
Choices (METHOD.md §2 fixes the Qwen settings; the rest is ours):

- Output size: the aspect ratio of the *first* reference, long side 1024, both sides multiples of 16
  (``target_size``). The pipeline's own default follows the *last* image; the paper's first-reference
  rule is what we pass explicitly.
- Qwen: 40 steps, ``true_cfg_scale=4.0`` with negative prompt ``" "`` (true CFG is only enabled when a
  negative prompt is given), every reference passed as a list (the 2511 "Plus" pipeline takes several).
- FLUX Kontext dev takes one conditioning image: two references are stitched side by side (the usual
  Kontext practice); references beyond ``max_references`` are dropped and listed in ``meta``.
- No reference: ``RenderError("no_reference")`` unless ``text_to_image_fallback=True``. Then Kontext
  runs its own text-to-image path (``image=None``), and Qwen runs ``QwenImagePipeline.from_pipe`` on the
  same weights (the edit pipeline indexes ``image[-1]`` and cannot run without one).
- Qwen-Image-Edit-2511 needs diffusers >= 0.37 (its ``zero_cond_t``); an older diffusers would load
  the weights and silently render without it, so ``load`` refuses it with a ConfigError.
- The seed drives a ``torch.Generator`` on the pipeline's device (CPU when offloading), so a
  (program, seed) pair renders the same image on the same hardware and library versions.
- One pipeline call at a time per renderer (a lock): a diffusers pipeline is not re-entrant, and a GPU
  gains nothing from two interleaved denoising loops. Calls run in a worker thread, so the event loop
  (an HTTP service, a benchmark) stays responsive.

On a GPU (about 58 GB of bf16 weights for Qwen; use ``cpu_offload=True`` on a 40-48 GB card)::

    pip install 'genevolve[diffusers]'
    python -c "from genevolve.render.diffusers_backend import QwenImageEditRenderer as R; \\
      from genevolve.types import Program, Reference; \\
      p = Program(gen_prompt='The cat from image 1 wearing a red scarf', \\
                  references=[Reference(img_id='IMG_001', path='cat.png')]); \\
      R().render(p, seed=0).image.save('out.png')"

or serve it: ``genevolve serve render --backend qwen_image_edit --port 8100``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any, ClassVar

from PIL import Image, ImageOps

from genevolve.registry import ConfigError, require
from genevolve.render.base import Renderer, RenderError, RenderResult
from genevolve.types import Program


def target_size(ref_w: int, ref_h: int, long_side: int = 1024, multiple: int = 16) -> tuple[int, int]:
    """(width, height) with the aspect ratio of ``ref_w x ref_h``, long side ``long_side`` (rounded down
    to ``multiple``), short side rounded to the nearest ``multiple`` and at least ``multiple``."""
    if ref_w <= 0 or ref_h <= 0:
        raise ValueError(f"reference size must be positive, got {ref_w}x{ref_h}")
    if long_side < multiple or multiple <= 0:
        raise ValueError(f"need long_side >= multiple > 0, got long_side={long_side}, multiple={multiple}")
    long_px = long_side // multiple * multiple
    short = min(ref_w, ref_h) / max(ref_w, ref_h) * long_px
    short_px = max(multiple, round(short / multiple) * multiple)
    return (long_px, short_px) if ref_w >= ref_h else (short_px, long_px)


def load_references(program: Program) -> list[Image.Image]:
    """The program's reference images as RGB, EXIF rotation applied; unreadable ones are a RenderError."""
    images = []
    for i, ref in enumerate(program.references):
        if not ref.path:
            raise RenderError("bad_reference", f"reference {i} ({ref.img_id}) has no local file")
        try:
            with Image.open(ref.path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "P"):  # composite transparency on white, not on black
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, "white")
                    bg.paste(rgba, mask=rgba.getchannel("A"))
                    images.append(bg)
                else:
                    images.append(im.convert("RGB"))
        except (OSError, ValueError) as exc:  # missing, truncated or not an image
            raise RenderError("bad_reference", f"reference {i} ({ref.img_id}, {ref.path}): {exc}") from exc
    return images


def stitch(images: list[Image.Image]) -> Image.Image:
    """Images side by side at the height of the first one (Kontext's multi-reference convention)."""
    height = images[0].height
    scaled = [im if im.height == height else im.resize((max(1, round(im.width * height / im.height)), height),
                                                       Image.Resampling.LANCZOS) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height), "white")
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


class _DiffusersRenderer(Renderer):
    """Loading, device placement, seeding and the worker thread; subclasses say how to call the pipeline."""

    pipeline_class: ClassVar[str]  # a diffusers class name
    default_model: ClassVar[str]

    def __init__(self, model: str | None = None, *, device: str | None = None, dtype: str = "bfloat16",
                 cpu_offload: bool = False, steps: int = 40, cfg: float = 4.0, long_side: int = 1024,
                 multiple: int = 16, text_to_image_fallback: bool = False,
                 load_kwargs: dict[str, Any] | None = None):
        """
        Args:
            model: Hugging Face id or local folder of the diffusers pipeline (default: the class's model).
            device: torch device; default CUDA when available, else CPU (minutes per image on CPU).
            dtype: torch dtype name for the weights ("bfloat16", "float16", "float32").
            cpu_offload: ``enable_model_cpu_offload()`` instead of moving everything to ``device``; fits
                smaller GPUs at some speed cost.
            steps: denoising steps.
            cfg: guidance strength (Qwen: ``true_cfg_scale``; Kontext: ``guidance_scale``).
            long_side, multiple: output size rule (``target_size``) applied to the first reference.
            text_to_image_fallback: render reference-free programs with the model's text-to-image path
                instead of refusing them with ``RenderError("no_reference")``.
            load_kwargs: extra ``from_pretrained`` arguments (revision, variant, cache_dir, ...).
        """
        self.model = model or self.default_model
        self.device = device
        self.dtype = dtype
        self.cpu_offload = cpu_offload
        self.steps = steps
        self.cfg = cfg
        self.long_side = long_side
        self.multiple = multiple
        self.text_to_image_fallback = text_to_image_fallback
        self.load_kwargs = dict(load_kwargs or {})
        self.pipe: Any = None
        self._t2i_pipe: Any = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()

    @classmethod
    def from_pipeline(cls, pipe: Any, **options: Any):
        """A renderer around an already built pipeline (a tiny test pipeline, or one the caller placed)."""
        renderer = cls(**options)
        renderer.pipe = pipe
        return renderer

    # ------------------------------------------------------------ loading

    def load(self) -> Any:
        """Build the pipeline once (downloads the weights on first use)."""
        with self._load_lock:
            if self.pipe is None:
                torch = require("torch", "diffusers")
                diffusers = require("diffusers", "diffusers")
                cls = getattr(diffusers, self.pipeline_class, None)
                if cls is None:
                    raise RuntimeError(f"diffusers {diffusers.__version__} has no {self.pipeline_class}; "
                                       "upgrade it: pip install -U 'genevolve[diffusers]'")
                self._check_library(diffusers)
                dtype = getattr(torch, self.dtype)
                pipe = cls.from_pretrained(self.model, torch_dtype=dtype, **self.load_kwargs)
                if self.cpu_offload:
                    pipe.enable_model_cpu_offload()
                else:
                    pipe.to(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
                pipe.set_progress_bar_config(disable=True)
                self.pipe = pipe
            return self.pipe

    def _generator(self, pipe: Any, seed: int) -> Any:
        torch = require("torch", "diffusers")
        # offloaded pipelines report their execution device (cuda); seeding there keeps results the
        # same with and without offload. Fakes in tests have no device: CPU.
        device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
        return torch.Generator(device=str(device)).manual_seed(int(seed))

    def _text_to_image_pipeline(self, pipe: Any) -> Any:
        return pipe

    def _check_library(self, diffusers: Any) -> None:
        """Raise ConfigError when the installed diffusers would load the model but run it wrongly."""

    def _call_kwargs(self, program: Program, images: list[Image.Image], meta: dict[str, Any], *,
                     steps: int, cfg: float, size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline's keyword arguments (without ``generator``); may add entries to ``meta``."""
        raise NotImplementedError

    # ------------------------------------------------------------ rendering

    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        return await asyncio.to_thread(self._render_sync, program, seed, {})

    async def arender_with(self, program: Program, *, seed: int = 0, steps: int | None = None,
                           cfg: float | None = None, width: int | None = None,
                           height: int | None = None) -> RenderResult:
        """``arender`` with per-call settings (the HTTP service's ``num_inference_steps``,
        ``true_cfg_scale``, ``width``, ``height``); ``None`` keeps the renderer's own."""
        overrides = {k: v for k, v in dict(steps=steps, cfg=cfg, width=width, height=height).items()
                     if v is not None}
        return await asyncio.to_thread(self._render_sync, program, seed, overrides)

    def _render_sync(self, program: Program, seed: int, overrides: dict[str, Any]) -> RenderResult:
        if not program.gen_prompt.strip():
            raise RenderError("empty_prompt", "the program's gen_prompt is empty")
        images = load_references(program)
        if not images and not self.text_to_image_fallback:
            raise RenderError("no_reference", f"{self.name} edits reference images and the program has none; "
                              "set text_to_image_fallback=True to use the model's text-to-image path")
        pipe = self.load()
        if not images:
            pipe = self._text_to_image_pipeline(pipe)
        steps = int(overrides.get("steps", self.steps))
        cfg = float(overrides.get("cfg", self.cfg))
        width, height = self._size(images)
        if "width" in overrides or "height" in overrides:  # snapped down to the model's multiple
            width = max(self.multiple, int(overrides.get("width", width)) // self.multiple * self.multiple)
            height = max(self.multiple, int(overrides.get("height", height)) // self.multiple * self.multiple)
        meta: dict[str, Any] = {"renderer": self.name, "model": self.model, "seed": seed, "steps": steps,
                                "n_references": len(images), "text_to_image": not images}
        kwargs = self._call_kwargs(program, images, meta, steps=steps, cfg=cfg, size=(width, height))
        meta.update(width=kwargs["width"], height=kwargs["height"])
        start = time.perf_counter()
        with self._call_lock:
            kwargs["generator"] = self._generator(pipe, seed)
            try:
                out = pipe(**kwargs)
            except (ValueError, RuntimeError) as exc:  # e.g. CUDA out of memory, a rejected size
                raise RenderError("pipeline_error", f"{type(exc).__name__}: {exc}") from exc
        meta["seconds"] = round(time.perf_counter() - start, 3)
        return RenderResult(image=out.images[0], meta=meta)

    def _size(self, images: list[Image.Image]) -> tuple[int, int]:
        if images:
            return target_size(*images[0].size, long_side=self.long_side, multiple=self.multiple)
        side = self.long_side // self.multiple * self.multiple
        return side, side

    async def aclose(self) -> None:
        self.pipe = self._t2i_pipe = None


class QwenImageEditRenderer(_DiffusersRenderer):
    """Qwen-Image-Edit-2511 through ``QwenImageEditPlusPipeline``: the paper's frozen generator."""

    name = "qwen_image_edit"
    pipeline_class = "QwenImageEditPlusPipeline"
    default_model = "Qwen/Qwen-Image-Edit-2511"

    def __init__(self, model: str | None = None, *, negative_prompt: str = " ", **options: Any):
        """``negative_prompt``: the paper uses a single space, which turns true CFG on with an empty
        condition. Other options: see ``_DiffusersRenderer``."""
        super().__init__(model, **options)
        self.negative_prompt = negative_prompt

    def _call_kwargs(self, program: Program, images: list[Image.Image], meta: dict[str, Any], *,
                     steps: int, cfg: float, size: tuple[int, int]) -> dict[str, Any]:
        width, height = size
        meta["true_cfg_scale"] = cfg
        kwargs: dict[str, Any] = dict(prompt=program.gen_prompt, negative_prompt=self.negative_prompt,
                                      true_cfg_scale=cfg, num_inference_steps=steps,
                                      width=width, height=height, num_images_per_prompt=1)
        if images:
            kwargs["image"] = images
        return kwargs

    def _text_to_image_pipeline(self, pipe: Any) -> Any:
        if self._t2i_pipe is None:
            if not type(pipe).__module__.startswith("diffusers"):  # an injected pipeline handles image=None
                return pipe
            diffusers = require("diffusers", "diffusers")
            # Shares the edit pipeline's modules: no second copy of the weights. from_pipe casts the new
            # pipeline, and so the shared modules, to float32 unless it is given the dtype (diffusers 0.42:
            # `.to(dtype=torch_dtype or float32)`): both pipelines would double in memory.
            self._t2i_pipe = diffusers.QwenImagePipeline.from_pipe(pipe, torch_dtype=pipe.dtype)
        return self._t2i_pipe

    def _check_library(self, diffusers: Any) -> None:
        """Qwen-Image-Edit-2511's transformer config sets ``zero_cond_t``; diffusers before 0.37 drops the
        field with a log line and renders with a different model, so such a version is refused here."""
        transformer = getattr(diffusers, "QwenImageTransformer2DModel", None)
        if transformer is None or "zero_cond_t" not in inspect.signature(transformer.__init__).parameters:
            raise ConfigError(f"diffusers {diffusers.__version__} predates Qwen-Image-Edit-2511 (its transformer "
                              f"ignores zero_cond_t and renders without it): pip install -U 'diffusers>=0.37'")


class FluxKontextRenderer(_DiffusersRenderer):
    """FLUX.1 Kontext (dev and its fine-tunes) through ``FluxKontextPipeline``."""

    name = "flux_kontext"
    pipeline_class = "FluxKontextPipeline"
    default_model = "black-forest-labs/FLUX.1-Kontext-dev"

    def __init__(self, model: str | None = None, *, steps: int = 28, cfg: float = 2.5,
                 max_references: int = 2, **options: Any):
        """Kontext dev defaults: 28 steps, ``guidance_scale=2.5`` (distilled guidance, no true CFG).
        ``max_references``: how many references are stitched into the one conditioning image."""
        super().__init__(model, steps=steps, cfg=cfg, **options)
        if max_references < 1:
            raise ValueError(f"max_references must be at least 1, got {max_references}")
        self.max_references = max_references

    def _call_kwargs(self, program: Program, images: list[Image.Image], meta: dict[str, Any], *,
                     steps: int, cfg: float, size: tuple[int, int]) -> dict[str, Any]:
        width, height = size  # the first reference's aspect, not the stitched canvas's
        meta["guidance_scale"] = cfg
        kwargs: dict[str, Any] = dict(prompt=program.gen_prompt, guidance_scale=cfg,
                                      num_inference_steps=steps, width=width, height=height,
                                      num_images_per_prompt=1, max_area=width * height)
        if images:
            used = images[: self.max_references]
            meta["dropped_references"] = list(range(len(used), len(images)))
            meta["stitched"] = len(used) > 1
            kwargs["image"] = stitch(used) if len(used) > 1 else used[0]
        return kwargs
