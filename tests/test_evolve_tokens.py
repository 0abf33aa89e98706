"""Token views: the assistant mask decodes to exactly the assistant turns on tricky chat templates;
log-probs of masked tokens match a plain full-logits computation; teacher views align."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from genevolve.evolve.tokens import (  # noqa: E402
    ChatEncoder,
    TokenViewError,
    aligned_positions,
    collate,
    teacher_logps,
    token_logps,
    with_system,
)
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.types import Trajectory, Turn  # noqa: E402
from tests.test_policy_hf import TEMPLATE as CHATML  # noqa: E402
from tests.test_policy_hf import llava, make_llama, make_tokenizer  # noqa: E402, F401

# SmolLM2-135M-Instruct's template, as shipped in its tokenizer config (a default system message
# when the conversation has none).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen3-style: past assistant turns have their <think> text pulled out and re-spaced ("<think>\n" +
# reasoning + "\n</think>\n\n"), tool responses (user turns wrapped in <tool_response>) do not count
# as queries, and enable_thinking=False puts an empty think block in the generation prompt only.
QWEN3 = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' and not (m.content.startswith('<tool_response>') "
    "and m.content.endswith('</tool_response>')) -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role != 'assistant' -%}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}"
    "{%- else -%}{%- set content = m.content -%}{%- set reasoning = '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}{%- endif -%}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}"
    "{%- else -%}{{- '<|im_start|>assistant\n' + content -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}"
    "{%- endif -%}{%- endif -%}"
)
TEMPLATES = {"chatml": CHATML, "smollm2": SMOLLM2, "qwen3": QWEN3}

TURNS = [
    Turn(role="system", content="You are a planner."),
    Turn(role="user", content="draw a red fox", kind="request"),
    Turn(role="assistant", content='<think>search first</think>\n<tool_call>{"name": "image_search", '
                                   '"arguments": {"query": "fox"}}</tool_call>'),
    Turn(role="user", content="<tool_response>\nIMG_001: fox\n</tool_response>", kind="tool_response"),
    Turn(role="assistant", content='<think>\nuse IMG_001\n</think>\n\n<answer>{"gen_prompt": "a fox"}</answer>'),
]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def encoder(tok, template: str, **kw) -> ChatEncoder:
    return ChatEncoder(_with_template(tok, template), **kw)


def _with_template(tok, template):
    import copy

    clone = copy.copy(tok)
    clone.chat_template = template
    return clone


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_view(enc: ChatEncoder, turns: list[Turn]) -> None:
    view = enc.view(turns)
    assistant = [t for t in turns if t.role == "assistant"]
    assert len(view.spans) == len(assistant) == len(view.turn_index)
    covered = set()
    for (start, end), turn in zip(view.spans, assistant, strict=True):
        assert decode(enc.tokenizer, view.input_ids[start:end]) == turn.content + "<|im_end|>"
        assert all(view.mask[start:end])
        covered |= set(range(start, end))
    assert {t for t, m in enumerate(view.mask) if m} == covered  # 1 exactly on the spans
    context = decode(enc.tokenizer, [i for i, m in zip(view.input_ids, view.mask, strict=True) if not m])
    assert context.count("<|im_start|>assistant\n") == len(assistant)  # role headers are context


@pytest.mark.parametrize("name", TEMPLATES)
def test_masked_tokens_decode_to_the_assistant_turns(tok, name):
    check_view(encoder(tok, TEMPLATES[name]), TURNS)


def test_qwen3_template_really_rewrites_history(tok):
    # The quirk the view must survive: rendering the real turns changes the first assistant turn.
    rendered = _with_template(tok, QWEN3).apply_chat_template(
        [{"role": t.role, "content": t.content} for t in TURNS], tokenize=False)
    assert TURNS[2].content not in rendered and "<think>\nsearch first\n</think>\n\n<tool_call>" in rendered


def test_contexts_equal_what_the_policy_was_prompted_with(tok):
    # With a template that does not rewrite history, every assistant turn's context is exactly the
    # token sequence HFPolicy.encode gave the model when it sampled that turn.
    policy = HFPolicy.from_objects(make_llama(tok), tok)
    view = ChatEncoder.from_policy(policy).view(TURNS)
    for (start, _), i in zip(view.spans, view.turn_index, strict=True):
        assert view.input_ids[:start] == policy.encode(TURNS[:i])["input_ids"][0].tolist()


def test_smollm2_default_system_message_and_trailing_turns(tok):
    enc = encoder(tok, SMOLLM2)
    no_system = TURNS[1:] + [Turn(role="user", content="<tool_response>late</tool_response>")]
    view = enc.view(no_system)
    assert decode(enc.tokenizer, view.input_ids).startswith("<|im_start|>system\nYou are a helpful AI")
    assert view.spans[-1][1] == len(view)  # the trailing user turn is left out
    check_view(enc, no_system)


def test_qwen3_without_thinking_is_not_one_sequence(tok):
    enc = encoder(tok, QWEN3, template_kwargs={"enable_thinking": False})
    with pytest.raises(TokenViewError, match="prefix-consistent"):
        enc.view(TURNS)


def test_bad_conversations(tok):
    enc = encoder(tok, CHATML)
    with pytest.raises(TokenViewError, match="no assistant turn"):
        enc.view(TURNS[:2])
    with pytest.raises(TokenViewError, match="starts with an assistant"):
        enc.view(TURNS[2:])
    with pytest.raises(TokenViewError, match="single token"):
        ChatEncoder(tok, end_of_turn="<|not a token|>")


def test_sft_row_and_trajectory_inputs(tok):
    enc = encoder(tok, CHATML)
    row = {"messages": [{"role": t.role, "content": t.content} for t in TURNS], "images": []}
    from_row = enc.view_sft_row(row)
    from_traj = enc.view(Trajectory(request="draw a red fox", turns=TURNS))
    assert from_row.input_ids == from_traj.input_ids and from_row.mask == from_traj.mask


# -- random trajectories ------------------------------------------------------------------------

PIECES = ["<think>", "</think>", "\n", " ", "  ", "fox", "é", "日本", "IMG_001", "<tool_call>", "{", '"',
          "<tool_response>", "</tool_response>", "<answer>", "\t", "a b", "\n\n"]
texts = st.lists(st.sampled_from(PIECES), min_size=0, max_size=8).map("".join)


@st.composite
def conversations(draw):
    turns = [Turn(role="system", content=draw(texts))] if draw(st.booleans()) else []
    turns.append(Turn(role="user", content=draw(texts) or "x"))
    for _ in range(draw(st.integers(1, 4))):
        turns.append(Turn(role="assistant", content=draw(texts)))
        body = draw(texts)
        turns.append(Turn(role="user", content=f"<tool_response>{body}</tool_response>" if draw(st.booleans()) else body))
    if draw(st.booleans()):
        turns.pop()  # end on an assistant turn half of the time
    return turns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversations(), st.sampled_from(sorted(TEMPLATES)))
def test_random_conversations_round_trip(tok, turns, name):
    check_view(encoder(tok, TEMPLATES[name]), turns)


# -- log-probs ----------------------------------------------------------------------------------


def reference_logps(model, ids: list[int], mask: list[int]) -> list[float]:
    """Full logits over the whole sequence, log_softmax, one token at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    out = [0.0] * len(ids)
    for t in range(1, len(ids)):
        if mask[t]:
            out[t] = torch.log_softmax(logits[t - 1].double(), -1)[ids[t]].item()
    return out


def test_token_logps_match_reference_and_ignore_padding(tok, monkeypatch):
    model = make_llama(tok)
    enc = encoder(tok, CHATML)
    views = [enc.view(TURNS), enc.view(TURNS[:3])]
    batch = collate(views, tok.pad_token_id)
    with torch.no_grad():
        got = token_logps(model, batch)
    for b, v in enumerate(views):
        assert got[b, : len(v)].tolist() == pytest.approx(reference_logps(model, v.input_ids, v.mask), abs=1e-5)
        assert got[b, len(v):].abs().sum() == 0
    # Without logits_to_keep (models that lack it) the result is the same.
    import genevolve.evolve.tokens as tokens_module

    monkeypatch.setattr(tokens_module, "_accepts_logits_to_keep", lambda model: False)
    with torch.no_grad():
        assert torch.allclose(token_logps(model, batch), got, atol=1e-6)
    # Gradients reach the weights; temperature rescales.
    token_logps(model, batch).sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(token_logps(model, batch, temperature=0.7), got)


def test_teacher_logps_score_the_student_tokens_under_another_system(tok):
    model = make_llama(tok, seed=3)
    enc = encoder(tok, CHATML)
    student = enc.view(TURNS)
    teacher = enc.view(TURNS, system="You are a planner.\n# Current-task decision guide\n- search the subject")
    assert teacher.assistant_ids == student.assistant_ids and len(teacher) > len(student)
    assert enc.view(with_system(TURNS[1:], "guide")).input_ids == enc.view(TURNS, system="guide").input_ids
    calls = []

    def score(views):  # the learner's no-grad pass, one micro-batch
        calls.append(len(views))
        if not views:
            return []
        with torch.no_grad():
            scored = token_logps(model, collate(views, tok.pad_token_id))
        return [scored[b, : len(v)] for b, v in enumerate(views)]

    out = teacher_logps(score, [student, student], [teacher, None])
    s_pos, t_pos = aligned_positions(student, teacher)
    want = reference_logps(model, teacher.input_ids, teacher.mask)
    assert out[0].shape == (len(student),) and out[0][s_pos].tolist() == pytest.approx([want[t] for t in t_pos], abs=1e-5)
    assert not out[0][[t for t in range(len(student)) if t not in s_pos]].any()  # 0 off the student's mask
    assert out[1] is None  # no bundle, no teacher signal
    plain = reference_logps(model, student.input_ids, student.mask)
    assert out[0][s_pos].tolist() != pytest.approx([plain[t] for t in s_pos], abs=1e-5)  # context matters
    assert teacher_logps(score, [student], [None]) == [None] and calls == [1, 0]  # scored once, even with no teacher
    changed = [*TURNS[:4], Turn(role="assistant", content="<think>other</think>")]
    with pytest.raises(TokenViewError, match="differ"):
        aligned_positions(student, enc.view(changed))


# -- VLM ----------------------------------------------------------------------------------------


def test_vlm_view_has_pixels_and_image_tokens(llava, tmp_path):  # noqa: F811
    model, processor = llava
    paths = []
    for colour in ((200, 80, 0), (0, 0, 255)):
        paths.append(tmp_path / f"{colour[0]}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    response = Turn(role="user", content="<tool_response>\nIMG_001: fox <image>\nIMG_002: sky <image>\n</tool_response>",
                    images=[str(p) for p in paths], kind="tool_response")
    turns = [*TURNS[:3], response, TURNS[4]]
    policy = HFPolicy.from_objects(model, processor=processor)
    enc = ChatEncoder.from_policy(policy)
    view = enc.view(turns)
    assert view.extra["pixel_values"].shape == (2, 3, 28, 28)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert view.input_ids.count(image_id) == 8  # 4 patches per image
    for (start, end), i in zip(view.spans, view.turn_index, strict=True):
        assert decode(processor.tokenizer, view.input_ids[start:end]) == turns[i].content + "<|im_end|>"
        assert view.input_ids[:start] == policy.encode(turns[:i])["input_ids"][0].tolist()
    batch = collate([view, enc.view(turns[:3])], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logp = token_logps(model, batch)
        swapped = enc.view([*TURNS[:3], response.model_copy(update={"images": [str(paths[1]), str(paths[0])]}),
                            TURNS[4]])
        other = token_logps(model, collate([swapped], processor.tokenizer.pad_token_id))
    last = view.spans[-1]
    assert not torch.allclose(logp[0, last[0]:last[1]], other[0, last[0]:last[1]])  # the images are seen


def test_real_smollm2_tokenizer_when_cached():
    """The embedded model's own tokenizer and template, when a converted copy is already cached."""
    import os
    from pathlib import Path

    from genevolve.policy.embedded import MODEL_DIR_NAME

    folder = Path(os.environ.get("GENEVOLVE_CACHE", Path.home() / ".cache" / "genevolve")) / "models" / MODEL_DIR_NAME
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip("no converted SmolLM2 in the cache (genevolve run converts it once)")
    real = transformers.AutoTokenizer.from_pretrained(folder)
    enc = ChatEncoder(real)
    assert enc.end_of_turn == "<|im_end|>"
    check_view(enc, TURNS)
    view = enc.view(TURNS)
    for (start, _), i in zip(view.spans, view.turn_index, strict=True):
        prompt = real.apply_chat_template([t.model_dump(include={"role", "content"}) for t in TURNS[:i]],
                                          add_generation_prompt=True, tokenize=False)
        assert view.input_ids[:start] == real(prompt, add_special_tokens=False)["input_ids"]


# -- forced tokens --------------------------------------------------------------------------------


@st.composite
def forced_turns(draw):
    """TURNS with random forced spans on each assistant turn."""
    out = []
    for turn in TURNS:
        if turn.role != "assistant":
            out.append(turn)
            continue
        n = len(turn.content)
        cuts = sorted(draw(st.sets(st.integers(min_value=0, max_value=n), max_size=8)))
        pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
        out.append(turn.model_copy(update={"forced": pairs}))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forced_turns(), st.sampled_from(sorted(TEMPLATES)))
def test_skip_forced_masks_exactly_the_tokens_inside_forced_spans(tok, turns, name):
    plain = encoder(tok, TEMPLATES[name]).view(turns)
    skipping = encoder(tok, TEMPLATES[name], skip_forced=True).view(turns)
    assert skipping.input_ids == plain.input_ids and skipping.spans == plain.spans
    assistant = [t for t in turns if t.role == "assistant"]
    for (start, end), turn in zip(plain.spans, assistant, strict=True):
        inside = set().union(*[range(a, b) for a, b in turn.forced]) if turn.forced else set()
        at = 0
        for t in range(start, end):
            piece = decode(tok, [plain.input_ids[t]])
            chars = range(at, at + len(piece)) if piece != "<|im_end|>" else range(0)
            at += len(chars)
            wholly_forced = bool(chars) and set(chars) <= inside
            assert skipping.mask[t] == (0 if wholly_forced else 1), (piece, turn.forced)
    assert skipping.n_forced == sum(plain.mask) - sum(skipping.mask)
    assert plain.n_forced == 0


def split_ids(tok, text: str, cuts: list[int]) -> list[int]:
    """A non-canonical tokenisation of ``text``: each piece between ``cuts`` tokenised on its own."""
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [i for a, b in zip(bounds, bounds[1:], strict=False) if b > a
            for i in tok(text[a:b], add_special_tokens=False)["input_ids"]]


@st.composite
def sampled_turns(draw):
    """TURNS whose assistant turns carry sampled ids (a random split of the content) and random forced spans."""
    out = []
    for turn in draw(forced_turns()):
        if turn.role == "assistant":
            cuts = draw(st.lists(st.integers(min_value=1, max_value=len(turn.content) - 1), max_size=12))
            turn = turn.model_copy(update={"token_ids": split_ids(make_tokenizer(), turn.content, cuts)})
        out.append(turn)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sampled_turns(), st.sampled_from(sorted(TEMPLATES)), st.booleans())
def test_sampled_ids_are_scored_as_sampled(tok, turns, name, skip):
    view = encoder(tok, TEMPLATES[name], skip_forced=skip).view(turns)
    assistant = [t for t in turns if t.role == "assistant"]
    for (start, end), turn in zip(view.spans, assistant, strict=True):
        assert view.input_ids[start:end - 1] == turn.token_ids  # the sampled split, then the end of turn
        inside = set().union(*[range(a, b) for a, b in turn.forced]) if turn.forced else set()
        at = 0
        for t in range(start, end - 1):
            piece = decode(tok, [view.input_ids[t]])
            chars = set(range(at, at + len(piece)))
            at += len(piece)
            wholly_forced = skip and bool(chars) and chars <= inside
            assert view.mask[t] == (0 if wholly_forced else 1), (piece, turn.forced)


def test_sampled_ids_that_do_not_spell_the_text_are_ignored(tok):
    canonical = encoder(tok, CHATML).view(TURNS)
    other = split_ids(tok, "something else entirely", [4])
    turns = [t.model_copy(update={"token_ids": other}) if t.role == "assistant" else t for t in TURNS]
    assert encoder(tok, CHATML).view(turns).input_ids == canonical.input_ids


def test_a_token_ending_inside_a_character_is_scored(tok):
    text = "<think>é</think>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    partial = sum(decode(tok, ids[: i + 1]).endswith("\ufffd") for i in range(len(ids)))
    assert partial >= 1  # this tokenizer spells é in two byte tokens
    turn = Turn(role="assistant", content=text, forced=[(0, len(text))], token_ids=ids)
    view = encoder(tok, CHATML, skip_forced=True).view([TURNS[0], TURNS[1], turn])
    start, end = view.spans[0]
    assert view.input_ids[start:end - 1] == ids
    # all characters forced: only the token cut inside é (no character of its own) and the end of turn count
    assert sum(view.mask[start:end]) == partial + 1


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_forced_end_of_turn_is_masked_only_when_skipping(tok, name):
    turns = [t.model_copy(update={"forced_end": True}) if t.role == "assistant" else t for t in TURNS]
    plain = encoder(tok, TEMPLATES[name]).view(turns)
    skipping = encoder(tok, TEMPLATES[name], skip_forced=True).view(turns)
    ends = [end - 1 for _, end in plain.spans]  # each assistant span closes with its end-of-turn token
    assert all(plain.mask[t] == 1 and skipping.mask[t] == 0 for t in ends)
    assert skipping.n_forced == len(ends) and sum(plain.mask) - sum(skipping.mask) == len(ends)
    assert encoder(tok, TEMPLATES[name], skip_forced=True).view(TURNS).mask == plain.mask  # not forced: scored


def test_skip_forced_keeps_teacher_alignment_and_needs_a_fast_tokenizer(tok):
    turns = [t.model_copy(update={"forced": [(0, 7)]}) if t.role == "assistant" else t for t in TURNS]
    enc = encoder(tok, CHATML, skip_forced=True)
    student, teacher = enc.view(turns), enc.view(turns, system="guide")
    assert student.n_forced == teacher.n_forced > 0
    s_pos, t_pos = aligned_positions(student, teacher)
    assert len(s_pos) == sum(student.mask)

    class Slow:
        is_fast = False

    with pytest.raises(TokenViewError, match="fast tokenizer"):
        ChatEncoder(Slow(), skip_forced=True)
