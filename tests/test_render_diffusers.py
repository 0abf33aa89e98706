"""Diffusers renderers: the size rule, the exact pipeline arguments (fake pipelines), the loading path,
and a real FLUX Kontext pipeline built from tiny random components (CPU, about 3 s).

Qwen-Image-Edit needs a Qwen2.5-VL processor and tokenizer from the Hub, so its real pipeline is run
on a GPU only (command in ``genevolve.render.diffusers_backend``'s docstring).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops

from genevolve.registry import ConfigError, MissingDependency, resolve
from genevolve.render import RENDERERS
from genevolve.render.base import RenderError
from genevolve.render.diffusers_backend import (
    FluxKontextRenderer,
    QwenImageEditRenderer,
    stitch,
    target_size,
)
from genevolve.types import Program, Reference


@given(st.integers(1, 10_000), st.integers(1, 10_000), st.sampled_from([256, 512, 1000, 1024, 1536]),
       st.sampled_from([8, 16, 32]))
def test_target_size_properties(w, h, long_side, multiple):
    tw, th = target_size(w, h, long_side, multiple)
    assert tw % multiple == 0 and th % multiple == 0 and min(tw, th) >= multiple
    assert max(tw, th) == long_side // multiple * multiple
    assert (w >= h and tw >= th) or (w <= h and tw <= th)  # orientation kept (a near-square may round to square)
    # aspect kept up to rounding the short side (half a multiple), unless clamped up to one multiple
    short_exact = min(w, h) / max(w, h) * max(tw, th)
    assert abs(min(tw, th) - short_exact) <= multiple / 2 or min(tw, th) == multiple


def test_target_size_examples_and_errors():
    assert target_size(1024, 768) == (1024, 768)
    assert target_size(3000, 2000) == (1024, 688)  # 682.7 -> 688
    assert target_size(500, 1000) == (512, 1024)
    assert target_size(1, 10_000) == (16, 1024)
    with pytest.raises(ValueError):
        target_size(0, 10)


class FakePipe:
    """Records the keyword arguments of each call, answers with a blank image of the asked size."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise self.fail
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]), "gray")])


def refs(tmp_path, *sizes):
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"r{i}.png"
        Image.new("RGBA", size, (255, 0, 0, 128)).save(path)
        out.append(Reference(img_id=f"IMG_{i + 1:03d}", path=str(path)))
    return out


async def test_qwen_call_matches_the_paper_settings(tmp_path):
    pipe = FakePipe()
    renderer = QwenImageEditRenderer.from_pipeline(pipe)
    program = Program(gen_prompt="the cat from image 1 on the sofa of image 2",
                      references=refs(tmp_path, (300, 200), (100, 400)))
    result = await renderer.arender(program, seed=42)
    (kw,) = pipe.calls
    assert kw["prompt"] == program.gen_prompt and kw["negative_prompt"] == " "
    assert kw["true_cfg_scale"] == 4.0 and kw["num_inference_steps"] == 40
    assert (kw["width"], kw["height"]) == (1024, 688)  # the first reference's 3:2, not the last one's
    assert [im.size for im in kw["image"]] == [(300, 200), (100, 400)]
    assert all(im.mode == "RGB" for im in kw["image"])
    assert kw["image"][0].getpixel((0, 0)) == (255, 127, 127)  # transparency composited on white
    assert kw["generator"].initial_seed() == 42
    assert result.image.size == (1024, 688)
    assert result.meta | {"seconds": 0} == {
        "renderer": "qwen_image_edit", "model": "Qwen/Qwen-Image-Edit-2511", "seed": 42, "steps": 40,
        "n_references": 2, "text_to_image": False, "true_cfg_scale": 4.0, "width": 1024, "height": 688,
        "seconds": 0}


async def test_no_reference_is_refused_unless_fallback(tmp_path):
    pipe = FakePipe()
    with pytest.raises(RenderError) as err:
        await QwenImageEditRenderer.from_pipeline(pipe).arender(Program(gen_prompt="a cat"))
    assert err.value.code == "no_reference" and "text_to_image_fallback" in err.value.message
    assert pipe.calls == []
    result = await QwenImageEditRenderer.from_pipeline(pipe, text_to_image_fallback=True).arender(
        Program(gen_prompt="a cat"), seed=1)
    assert "image" not in pipe.calls[0] and (pipe.calls[0]["width"], pipe.calls[0]["height"]) == (1024, 1024)
    assert result.meta["text_to_image"] is True


async def test_per_call_settings_and_errors(tmp_path):
    pipe = FakePipe()
    renderer = QwenImageEditRenderer.from_pipeline(pipe)
    program = Program(gen_prompt="p", references=refs(tmp_path, (64, 64)))
    await renderer.arender_with(program, seed=3, steps=8, cfg=2.0, width=500, height=260)
    kw = pipe.calls[0]
    assert (kw["num_inference_steps"], kw["true_cfg_scale"], kw["width"], kw["height"]) == (8, 2.0, 496, 256)
    with pytest.raises(RenderError) as err:
        await renderer.arender(Program(gen_prompt="  ", references=program.references))
    assert err.value.code == "empty_prompt"
    with pytest.raises(RenderError) as err:
        await renderer.arender(Program(gen_prompt="p", references=[Reference(img_id="IMG_001")]))
    assert err.value.code == "bad_reference"
    failing = QwenImageEditRenderer.from_pipeline(FakePipe(fail=RuntimeError("CUDA out of memory")))
    with pytest.raises(RenderError) as err:
        await failing.arender(program)
    assert err.value.code == "pipeline_error" and "out of memory" in err.value.message


async def test_kontext_stitches_two_references_and_drops_the_rest(tmp_path):
    pipe = FakePipe()
    renderer = FluxKontextRenderer.from_pipeline(pipe)
    program = Program(gen_prompt="p", references=refs(tmp_path, (200, 100), (50, 50), (10, 10)))
    result = await renderer.arender(program, seed=0)
    kw = pipe.calls[0]
    assert kw["image"].size == (300, 100)  # 200x100 + 50x50 scaled to height 100
    assert (kw["width"], kw["height"]) == (1024, 512) and kw["max_area"] == 1024 * 512
    assert (kw["guidance_scale"], kw["num_inference_steps"]) == (2.5, 28) and "true_cfg_scale" not in kw
    assert result.meta["dropped_references"] == [2] and result.meta["stitched"] is True
    assert stitch([Image.new("RGB", (10, 20))]).size == (10, 20)


def test_loading_path_dtype_device_and_offload(monkeypatch):
    import diffusers
    import torch

    built = []

    class FakeLoaded(FakePipe):
        @classmethod
        def from_pretrained(cls, model, **kw):
            pipe = cls()
            pipe.log = [("from_pretrained", model, kw)]
            built.append(pipe)
            return pipe

        def to(self, device):
            self.log.append(("to", device))

        def enable_model_cpu_offload(self):
            self.log.append(("offload",))

        def set_progress_bar_config(self, **kw):
            self.log.append(("progress", kw))

    monkeypatch.setattr(diffusers, "QwenImageEditPlusPipeline", FakeLoaded, raising=False)
    r = QwenImageEditRenderer(device="cpu", dtype="float16", load_kwargs={"revision": "abc"})
    assert r.load() is r.load()  # built once
    assert built[0].log == [("from_pretrained", "Qwen/Qwen-Image-Edit-2511", {"torch_dtype": torch.float16,
                                                                               "revision": "abc"}),
                            ("to", "cpu"), ("progress", {"disable": True})]
    QwenImageEditRenderer("my/model", cpu_offload=True).load()
    assert built[1].log[0][1] == "my/model" and built[1].log[1] == ("offload",)


def test_a_diffusers_without_2511_support_is_refused(monkeypatch):
    import diffusers

    class Before037:  # QwenImageTransformer2DModel as diffusers 0.36 declares it: no zero_cond_t
        def __init__(self, patch_size=2, in_channels=64, num_layers=60, guidance_embeds=False):
            pass

    monkeypatch.setattr(diffusers, "QwenImageTransformer2DModel", Before037)
    monkeypatch.setattr(diffusers, "QwenImageEditPlusPipeline", lambda: None, raising=False)
    with pytest.raises(ConfigError, match=r"diffusers>=0\.37"):
        QwenImageEditRenderer(device="cpu").load()


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependency, match=r"genevolve\[diffusers\]"):
        FluxKontextRenderer().load()


def test_kinds_are_registered():
    assert resolve(RENDERERS, "qwen_image_edit", "renderer") is QwenImageEditRenderer
    assert resolve(RENDERERS, "flux_kontext", "renderer") is FluxKontextRenderer


# ---------------------------------------------------------------- a real pipeline, tiny random weights


@pytest.fixture(scope="module")
def tiny_kontext():
    pytest.importorskip("diffusers")
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    def tokenizer():  # a word-level tokenizer: no vocabulary files from the Hub
        words = "a the cat red from image 1 2 with and in on".split()
        vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                       eos_token="</s>", model_max_length=77)

    torch.manual_seed(0)
    # five VAE levels (scale 16) keep Kontext's ~1024 px conditioning image at 32x32 latent tokens
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,) * 5, layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, down_block_types=("DownEncoderBlock2D",) * 5,
                        up_block_types=("UpDecoderBlock2D",) * 5, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=1, projection_dim=32, bos_token_id=0, eos_token_id=2,
                                        pad_token_id=0))
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    pipe = FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip,
                               tokenizer=tokenizer(), text_encoder_2=t5, tokenizer_2=tokenizer(),
                               transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_qwen_edit():
    """A real QwenImageEditPlusPipeline in bfloat16 from tiny random components (no tokenizer: the
    test below stops at the pipeline call)."""
    pytest.importorskip("diffusers")
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                vocab_size=64, bos_token_id=0, eos_token_id=1, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2,
                  spatial_merge_size=1, temporal_patch_size=1, fullatt_block_indexes=[0])
    encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    pipe = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder,
                                     tokenizer=None, processor=None, transformer=transformer)
    return pipe.to(dtype=torch.bfloat16)


async def test_text_to_image_fallback_shares_the_weights_in_their_dtype(tiny_qwen_edit, monkeypatch):
    """from_pipe would cast the shared modules to float32: twice the memory of both pipelines."""
    import diffusers
    import torch

    seen = []

    def call(self, **kwargs):  # the real QwenImagePipeline, built by from_pipe; only its denoising is skipped
        seen.append((self, {name: getattr(self, name).dtype for name in ("transformer", "vae", "text_encoder")}))
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]))])

    monkeypatch.setattr(diffusers.QwenImagePipeline, "__call__", call)
    renderer = QwenImageEditRenderer.from_pipeline(tiny_qwen_edit, text_to_image_fallback=True, long_side=64)
    await renderer.arender(Program(gen_prompt="a red cat"), seed=1)
    (t2i, dtypes), = seen
    assert type(t2i) is diffusers.QwenImagePipeline and t2i.transformer is tiny_qwen_edit.transformer
    assert set(dtypes.values()) == {torch.bfloat16}
    assert {tiny_qwen_edit.transformer.dtype, tiny_qwen_edit.text_encoder.dtype} == {torch.bfloat16}


@pytest.mark.slow
async def test_tiny_kontext_renders_deterministically(tiny_kontext, tmp_path):
    # the tiny VAE's latent grid needs sides that are multiples of 32
    renderer = FluxKontextRenderer.from_pipeline(tiny_kontext, steps=2, long_side=64, multiple=32,
                                                 text_to_image_fallback=True)
    program = Program(gen_prompt="the red cat from image 1 and image 2", references=refs(tmp_path, (96, 64), (64, 64)))
    a = await renderer.arender(program, seed=7)
    b = await renderer.arender(program, seed=7)
    c = await renderer.arender(program, seed=8)
    assert a.image.size == (64, 32)  # 3:2 at long side 64, short side rounded to 32
    # same seed: the same image up to CPU float non-associativity (threaded reductions); new seed: another one
    assert max(hi for _, hi in ImageChops.difference(a.image, b.image).getextrema()) <= 2
    assert max(hi for _, hi in ImageChops.difference(a.image, c.image).getextrema()) > 20
    t2i = await renderer.arender(Program(gen_prompt="a red cat"), seed=7)
    assert t2i.image.size == (64, 64) and t2i.meta["text_to_image"] is True
