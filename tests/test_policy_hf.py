"""HFPolicy on tiny models built from config: a Llama text LM and a LLaVA VLM (CPU, no hub)."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from PIL import Image  # noqa: E402

from genevolve.policy import Constraint, Sampling, UnsupportedConstraint  # noqa: E402
from genevolve.policy.hf import HFPolicy, SeededSampler  # noqa: E402
from genevolve.policy.messages import load_image, to_hf_messages  # noqa: E402
from genevolve.registry import ConfigError  # noqa: E402
from genevolve.types import Turn  # noqa: E402

# A ChatML-like template that also renders content parts, the way multimodal templates do.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["a red fox in the snow", "<think>search first</think>", '{"gen_prompt": "a cat"}', "IMG_001: fox"]
TURNS = [
    Turn(role="system", content="You are an agent."),
    Turn(role="user", content="draw a fox\nIMG_001: fox <image>", images=["unused.png"]),
]
GREEDY = Sampling(temperature=0.0, max_tokens=6)


def make_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A byte-level BPE trained on a few strings, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", *extra_specials]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    kw = {"extra_special_tokens": {"image_token": "<image>"}} if "<image>" in extra_specials else {}
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", **kw
    )
    hf_tok.chat_template = TEMPLATE
    return hf_tok


def text_config(tok) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def make_llama(tok, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**text_config(tok))).eval()


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture
def policy(tok):
    return HFPolicy.from_objects(make_llama(tok), tok, name="tiny")


@pytest.fixture
def turns(tmp_path):
    path = tmp_path / "fox.png"
    Image.new("RGB", (40, 30), (200, 80, 0)).save(path)
    return [TURNS[0], TURNS[1].model_copy(update={"images": [str(path)]})]


# -- text LM ---------------------------------------------------------------------------------


def test_prompt_uses_chat_template_without_placeholders(policy, turns):
    prompt = policy.format_prompt(turns)
    assert prompt == (
        "<|im_start|>system\nYou are an agent.<|im_end|>\n"
        "<|im_start|>user\ndraw a fox\nIMG_001: fox<|im_end|>\n<|im_start|>assistant\n"
    )
    assert policy.accepts_images is False and policy.processor is None
    ids = policy.encode(turns)["input_ids"][0].tolist()
    assert ids[0] == policy.tokenizer.convert_tokens_to_ids("<|im_start|>")  # no extra BOS added


async def test_generates_text_greedy_is_deterministic(policy, turns):
    first = await policy.achat(turns, sampling=GREEDY)
    assert isinstance(first, str)
    assert await policy.achat(turns, sampling=GREEDY) == first
    assert "<|im_end|>" not in first and "<|pad|>" not in first  # special tokens skipped


async def test_seed_determinism(policy, turns):
    def s(seed):
        return Sampling(temperature=1.0, top_p=1.0, max_tokens=8, seed=seed)

    outs = [await policy.achat(turns, sampling=s(seed)) for seed in (1, 2, 3, 4)]
    assert await policy.achat(turns, sampling=s(1)) == outs[0]
    assert len(set(outs)) > 1  # seeds matter


async def test_concurrent_calls_match_sequential(tok, turns):
    policy = HFPolicy.from_objects(make_llama(tok), tok, max_concurrency=2)
    samplings = [Sampling(temperature=1.0, max_tokens=8, seed=seed) for seed in (1, 2, 1, 2, 3)]
    sequential = [await policy.achat(turns, sampling=s) for s in samplings]
    torch.manual_seed(123)  # the global RNG must not matter
    concurrent = await asyncio.gather(*(policy.achat(turns, sampling=s) for s in samplings))
    assert list(concurrent) == sequential
    assert sequential[0] == sequential[2]
    await policy.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await policy.achat(turns, sampling=GREEDY)


def test_sync_chat(policy, turns):
    assert isinstance(policy.chat(turns, sampling=GREEDY), str)


def test_seeded_sampler_top_p_keeps_only_the_nucleus():
    scores = torch.tensor([[5.0, 0.0, 0.0, 0.0]])  # token 0 holds ~95% of the mass
    picks = {int(SeededSampler(1.0, 0.5, seed)(None, scores).argmax()) for seed in range(30)}
    assert picks == {0}
    picks = {int(SeededSampler(100.0, 1.0, seed)(None, scores).argmax()) for seed in range(30)}
    assert len(picks) > 1  # a hot, untruncated draw reaches the other tokens
    masked = SeededSampler(1.0, 1.0, 0)(None, scores)
    assert torch.isfinite(masked).sum() == 1


# -- constraints -----------------------------------------------------------------------------


class ForceToken:
    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        out[:, self.token_id] = 0.0
        return out


async def test_constraint_needs_a_factory(policy, turns):
    with pytest.raises(UnsupportedConstraint, match="grammar"):
        await policy.achat(turns, sampling=GREEDY, constraint=Constraint(kind="grammar", value='start: "a"'))


async def test_constraint_factory_processor_is_applied_before_sampling(tok, turns):
    fox = tok.encode("fox", add_special_tokens=False)[0]
    seen = []

    def factory(constraint, tokenizer):
        seen.append((constraint.kind, tokenizer))
        return ForceToken(fox) if constraint.kind == "regex" else None

    policy = HFPolicy.from_objects(make_llama(tok), tok, logits_processor_factory=factory)
    out = await policy.achat(
        turns,
        sampling=Sampling(temperature=1.0, max_tokens=3, seed=0),
        constraint=Constraint(kind="regex", value="x"),
    )
    assert out == tok.decode([fox] * 3) and seen == [("regex", tok)]
    with pytest.raises(UnsupportedConstraint, match="json_schema"):
        await policy.achat(turns, sampling=GREEDY, constraint=Constraint(kind="json_schema", value={}))


# -- adapters and loading from disk ----------------------------------------------------------


async def test_lora_adapter_is_loaded(tok, turns, tmp_path):
    peft = pytest.importorskip("peft")
    base_out = await HFPolicy.from_objects(make_llama(tok), tok).achat(turns, sampling=GREEDY)
    lora = peft.get_peft_model(
        make_llama(tok), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 2.0)  # LoRA B starts at zero (a no-op); make the adapter matter
    lora.save_pretrained(tmp_path / "adapter")
    expected = await HFPolicy.from_objects(lora, tok).achat(turns, sampling=GREEDY)

    policy = HFPolicy.from_objects(make_llama(tok), tok, adapter=tmp_path / "adapter")
    assert isinstance(policy.model, peft.PeftModel)
    assert await policy.achat(turns, sampling=GREEDY) == expected != base_out
    with pytest.raises(ConfigError, match="adapter"):
        HFPolicy.from_objects(make_llama(tok), tok, adapter=tmp_path / "missing")


async def test_loads_text_model_from_folder(tok, turns, tmp_path):
    model = make_llama(tok)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    policy = HFPolicy(tmp_path / "m", dtype="float32")
    assert policy.accepts_images is False and policy.name == f"hf:{tmp_path / 'm'}"
    assert await policy.achat(turns, sampling=GREEDY) == await HFPolicy.from_objects(model, tok).achat(
        turns, sampling=GREEDY
    )
    with pytest.raises(ConfigError, match="not a VLM"):
        HFPolicy(tmp_path / "m", accepts_images=True)
    with pytest.raises(ConfigError, match="dtype"):
        HFPolicy(tmp_path / "m", dtype="float8")
    with pytest.raises(ConfigError, match="missing"):
        HFPolicy(tmp_path / "missing")


# -- VLM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava():
    """A tiny LLaVA (CLIP vision tower 28px/14px patches, Llama text) and its processor."""
    vtok = make_tokenizer(("<image>",))
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=vtok,
        chat_template=TEMPLATE,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = transformers.LlavaConfig(
        text_config={"model_type": "llama", **text_config(vtok)},
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        image_token_id=vtok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).eval(), processor


async def test_vlm_feeds_images_through_the_processor(llava, turns, tmp_path):
    model, processor = llava
    policy = HFPolicy.from_objects(model, processor=processor)
    assert policy.accepts_images is True and policy.tokenizer is processor.tokenizer
    assert policy.format_prompt(turns).count("<image>") == 1
    inputs = policy.encode(turns)
    assert inputs["pixel_values"].shape == (1, 3, 28, 28)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == 4  # (28/14)**2 patches, CLS dropped
    out = await policy.achat(turns, sampling=GREEDY)
    assert isinstance(out, str)

    # The image changes what the model sees, so it can change the logits.
    other = tmp_path / "blue.png"
    Image.new("RGB", (40, 30), (0, 0, 255)).save(other)
    blue = [turns[0], turns[1].model_copy(update={"images": [str(other)]})]
    with torch.no_grad():
        a = model(**policy.encode(turns)).logits[0, -1]
        b = model(**policy.encode(blue)).logits[0, -1]
    assert not torch.allclose(a, b)


async def test_vlm_used_text_only(llava, turns):
    model, processor = llava
    policy = HFPolicy.from_objects(model, processor=processor, accepts_images=False)
    assert "<image>" not in policy.format_prompt(turns)
    assert "pixel_values" not in policy.encode(turns)
    assert isinstance(await policy.achat(turns, sampling=GREEDY), str)


async def test_vlm_loads_from_folder(llava, turns, tmp_path):
    model, processor = llava
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    policy = HFPolicy(tmp_path / "vlm")
    assert policy.accepts_images is True
    assert type(policy.model).__name__ == "LlavaForConditionalGeneration"
    assert await policy.achat(turns, sampling=GREEDY) == await HFPolicy.from_objects(
        model, processor=processor
    ).achat(turns, sampling=GREEDY)


def test_hf_messages_parts_and_images(tmp_path):
    sprite = tmp_path / "sprite.png"
    Image.new("RGBA", (2000, 1000), (0, 0, 0, 0)).save(sprite)
    turn = Turn(role="user", content="see <image> and <image>", images=[str(sprite), str(sprite)])
    messages, images = to_hf_messages([turn], accepts_images=True, max_side=256)
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see "},
                {"type": "image"},
                {"type": "text", "text": " and "},
                {"type": "image"},
            ],
        }
    ]
    assert [im.size for im in images] == [(256, 128)] * 2
    assert images[0].mode == "RGB" and images[0].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert to_hf_messages([turn], accepts_images=False) == ([{"role": "user", "content": "see and"}], [])
    url = "data:image/png;base64," + __import__("base64").b64encode(sprite.read_bytes()).decode()
    assert load_image(url, max_side=100).size == (100, 50)


async def test_vlm_in_bfloat16_gets_pixels_in_its_dtype(llava, turns):
    import copy

    model, processor = llava
    policy = HFPolicy.from_objects(copy.deepcopy(model).to(torch.bfloat16), processor=processor)
    assert isinstance(await policy.achat(turns, sampling=GREEDY), str)


def test_context_overflow_is_a_policy_error(tok):
    from genevolve.policy.base import PolicyError

    policy = HFPolicy.from_objects(make_llama(tok), tok)  # max_position_embeddings=512
    long_turns = [Turn(role="user", content="fox " * 2000)]
    with pytest.raises(PolicyError, match="beyond the model's context"):
        policy.chat(long_turns, sampling=GREEDY)


def test_structured_option_turns_on_the_protocol_grammar(tmp_path, tok):
    from genevolve.agent import Agent
    from genevolve.policy.guided import llguidance_factory
    from genevolve.tools.knowledge import KnowledgeTool

    make_llama(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    plain = HFPolicy(tmp_path)
    assert plain.logits_processor_factory is None and not getattr(plain, "prefers_structured", False)
    assert Agent(plain, [KnowledgeTool()]).constraint_factory is None
    guided = HFPolicy(tmp_path, structured=True, think_max_chars=64)
    assert guided.logits_processor_factory is llguidance_factory and guided.think_max_chars == 64
    assert Agent(guided, [KnowledgeTool()]).constraint_factory is not None
    with pytest.raises(ValueError, match="one or the other"):
        HFPolicy(tmp_path, structured=True, logits_processor_factory=llguidance_factory)


def test_torch_threads_apply_to_the_generate_thread(tok):
    from genevolve.types import Turn

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(64, 64) @ torch.ones(64, 64)
        policy = HFPolicy.from_objects(make_llama(tok), tok, torch_threads=1)
        policy.chat([Turn(role="user", content="hi")], sampling=Sampling(max_tokens=2, seed=0))
        assert policy._executor.submit(torch.get_num_threads).result() == 1
        assert torch.get_num_threads() == 2  # the caller's setting is untouched
    finally:
        torch.set_num_threads(before)


def test_seeded_sampler_fails_the_call_clearly_when_no_token_is_allowed():
    import torch

    from genevolve.policy.base import PolicyError
    from genevolve.policy.hf import SeededSampler

    scores = torch.full((1, 8), float("-inf"))
    with pytest.raises(PolicyError, match="no token can be sampled"):
        SeededSampler(1.0, 1.0, seed=0)(torch.zeros(1, 1, dtype=torch.long), scores)
    scores[0, 3] = float("nan")
    with pytest.raises(PolicyError, match="no token can be sampled"):
        SeededSampler(1.0, 1.0, seed=0)(torch.zeros(1, 1, dtype=torch.long), scores)
    scores[0, 5] = 0.0  # one finite token: it is the draw
    assert int(SeededSampler(1.0, 0.9, seed=0)(torch.zeros(1, 1, dtype=torch.long), scores).argmax()) == 5
