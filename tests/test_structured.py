"""Grammar-constrained decoding: the grammar admits exactly the protocol, and a random tiny model
decoding under it always produces turns that parse (protocol failures are impossible, not unlikely)."""

from __future__ import annotations

import pytest

pytest.importorskip("llguidance")
torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from genevolve.agent import Agent, AgentConfig, RolloutState  # noqa: E402
from genevolve.policy.base import Constraint, Sampling  # noqa: E402
from genevolve.policy.guided import GrammarLogitsProcessor, llguidance_factory  # noqa: E402
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.protocol import ToolCall, format_turn, parse_turn  # noqa: E402
from genevolve.structured import constraint_factory, protocol_grammar  # noqa: E402
from genevolve.types import RetrievedImage, StopReason, Trajectory, Turn  # noqa: E402
from tests.test_policy_hf import text_config  # noqa: E402


def make_llama(tok, seed: int = 0):
    """A tiny random Llama with room for the whole system prompt (the byte-level test tokenizer
    spends about one token per character)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**text_config(tok), "max_position_embeddings": 32768})
    return transformers.LlamaForCausalLM(config).eval()


def accepts(tok, grammar: str, text: str) -> bool:
    proc = GrammarLogitsProcessor(Constraint(kind="grammar", value=grammar), tok)
    ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return all(proc.matcher.consume_token(t) for t in ids) and proc.matcher.is_accepting()


def test_grammar_admits_protocol_turns_only(tok, tools):
    g = protocol_grammar(tools, ["IMG_001", "IMG_002"])
    call = format_turn("find it", tool_call=ToolCall("image_search", {"query": "red fox", "top_k": 5}))
    good = format_turn("ok", answer={"gen_prompt": "a fox", "reference_images": [{"img_id": "IMG_002", "note": "fox"}]})
    assert accepts(tok, g, call) and accepts(tok, g, good)
    bad_id = good.replace("IMG_002", "IMG_009")
    bad_tool = call.replace("image_search", "browse")
    stray = good + "\nmore"
    angle = format_turn("ok", answer={"gen_prompt": "a </answer> fox", "reference_images": [{"img_id": "IMG_001", "note": ""}]})
    missing_arg = '<think>\nx\n</think>\n<tool_call>\n{"name": "image_search", "arguments": {"query": "fox"}}\n</tool_call>'
    for text in (bad_id, bad_tool, stray, angle, missing_arg, "no think"):
        assert not accepts(tok, g, text), text


def _state(images=(), final=False, n_tool_calls=0, request="three red apples on a table"):
    s = RolloutState(request=request, final=final, n_tool_calls=n_tool_calls)
    for i, path in enumerate(images, 1):
        s.images[f"IMG_{i:03d}"] = RetrievedImage(img_id=f"IMG_{i:03d}", path=path)
    return s


def test_constraint_factory_follows_the_rollout(tools):
    factory = constraint_factory(tools, max_tool_calls=10)
    start = factory(_state()).value
    assert "tool_call" in start and "answer" not in start  # no usable image yet: no answer
    with_images = factory(_state(["/a.png", None])).value
    assert "tool_call" in with_images and '"IMG_001"' in with_images and "IMG_002" not in with_images
    final = factory(_state(["/a.png"], final=True)).value
    assert "tool_call" not in final and "answer" in final
    last_chance = factory(_state(n_tool_calls=9)).value
    assert '"image_search"' in last_chance and '"search"' not in last_chance and "answer" not in last_chance
    assert '"enum": ["three red", "red apples", "apples table", "three", "red", "apples", "table"]' in last_chance
    repeated = _state(["/a.png"])
    repeated.last_repeated_tool = "search"
    assert '"search"' not in factory(repeated).value and '"image_search"' in factory(repeated).value


def test_request_phrases():
    from genevolve.structured import request_phrases

    assert request_phrases("Draw the Eiffel Tower at night") == ["eiffel tower", "tower night", "eiffel", "tower", "night"]
    assert request_phrases("") == [] and request_phrases("12 34") == []


@pytest.mark.parametrize("seed", range(4))
def test_random_model_under_grammar_always_parses(tok, tools, seed):
    policy = HFPolicy.from_objects(make_llama(tok, seed=seed), tok, logits_processor_factory=llguidance_factory)
    grammar = protocol_grammar(tools, ["IMG_003"], think_max_chars=40)
    text = policy.chat([Turn(role="user", content="draw a fox")], sampling=Sampling(temperature=1.0, seed=seed, max_tokens=2000),
                       constraint=Constraint(kind="grammar", value=grammar))
    parsed = parse_turn(text, {t.name for t in tools})
    assert parsed.error is None, text
    if parsed.answer is not None:
        assert {r["img_id"] for r in parsed.answer["reference_images"]} <= {"IMG_003"}


@pytest.mark.parametrize("seed", range(3))
def test_the_policy_bound_on_the_prompt_reaches_the_grammar(tok, tools, seed):
    """A random model's answers run long (the default bound is 500 characters); a policy's
    ``prompt_max_chars`` reaches the agent's grammar, so every program it writes is that short."""
    policy = HFPolicy.from_objects(make_llama(tok, seed=seed), tok, structured=True, think_max_chars=8,
                                   prompt_max_chars=12)
    cfg = AgentConfig(max_policy_calls=2, max_tool_calls=1, structured_decoding=True,
                      sampling=Sampling(temperature=1.0, seed=seed, max_tokens=2000))
    traj = Agent(policy, tools, cfg).run("a fox in the snow")
    assert traj.stop_reason == StopReason.ANSWER, traj.failure
    assert 1 <= len(traj.program.gen_prompt) <= 12
    assert all(len(r.note) <= 12 for r in traj.program.references)  # a note is no longer than the prompt


def test_structured_rollout_with_a_random_model_ends_with_a_program(tok, tools):
    policy = HFPolicy.from_objects(make_llama(tok, seed=7), tok, logits_processor_factory=llguidance_factory)
    cfg = AgentConfig(max_policy_calls=3, max_tool_calls=2, structured_decoding=True,
                      sampling=Sampling(temperature=1.0, seed=3, max_tokens=2000))
    traj = Agent(policy, tools, cfg).run("a fox in the snow")
    assert traj.n_format_errors == 0
    assert traj.stop_reason == StopReason.ANSWER, (traj.failure, [t.content[:200] for t in traj.turns[2:]])
    assert traj.program.references
    assert all(t.forced for t in traj.turns if t.role == "assistant")  # the grammar's scaffolding, kept
    assert Trajectory.from_json(traj.to_json()).turns == traj.turns


def test_other_constraint_kinds(tok):
    proc = llguidance_factory(Constraint(kind="regex", value=r"(yes|no)"), tok)
    assert proc.matcher.consume_tokens(tok("yes", add_special_tokens=False).input_ids)
    proc = llguidance_factory(Constraint(kind="json_schema", value={"type": "object", "properties": {"a": {"type": "integer"}},
                                                                   "required": ["a"]}), tok)
    assert not proc.matcher.is_error()


@settings(max_examples=50, deadline=None)
@given(words=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), min_size=1, max_size=8),
       cut=st.integers(min_value=0, max_value=31))
def test_unpack_bitmask_matches_the_bit_definition(words, cut):
    import torch

    from genevolve.policy.guided import unpack_bitmask

    vocab = 32 * len(words) - cut
    got = unpack_bitmask(torch.tensor(words, dtype=torch.int32), vocab).tolist()
    assert got == [bool((words[i // 32] >> (i % 32)) & 1) for i in range(vocab)]


def test_grounded_words_keep_order_case_and_skip_ids():
    from genevolve.structured import grounded_words

    words = grounded_words(["Draw the flag of Kuwait", "IMG_001: flag of Kuwait City, well-known"])
    assert words[:4] == ["Draw", "draw", "the", "flag"]
    assert "IMG_001" not in words and "img_001" not in words and "well-known" in words and "city" in words
    assert grounded_words(["a b c d"], limit=2) == ["a", "b"]


def test_grounded_query_grammar_admits_only_seen_words(tok, tools):
    from genevolve.structured import _grounded_image_tool, grounded_words

    image = next(t for t in tools if t.name == "image_search")
    words = grounded_words(["Draw the flag of the country whose capital is Kuwait City.",
                            "Kuwait City is the capital of Kuwait."])
    g = protocol_grammar([_grounded_image_tool(image, words)], None)

    def call(query: str) -> str:
        return format_turn("x", tool_call=ToolCall("image_search", {"query": query, "top_k": 5}))

    assert accepts(tok, g, call("flag of Kuwait")) and accepts(tok, g, call("kuwait city"))
    for query in ("poodle", "flag of Kuwaitt", "flag  of Kuwait", "flag of Kuwait ", " ".join(["flag"] * 7)):
        assert not accepts(tok, g, call(query)), query


def test_grounded_factory_uses_the_request_and_every_observation(tools):
    factory = constraint_factory(tools, max_tool_calls=10, grounded_queries=True)
    state = _state(request="a red fox")
    state.observations.append("Foxes are small omnivorous mammals.")
    grammar = factory(state).value
    assert "omnivorous" in grammar and "fox" in grammar and "mammals" in grammar
    assert "omnivorous" not in constraint_factory(tools, max_tool_calls=10)(state).value


@pytest.mark.parametrize("seed", range(3))
def test_grounded_rollout_queries_only_use_seen_words(tok, tools, seed):
    import re

    policy = HFPolicy.from_objects(make_llama(tok, seed=seed), tok, logits_processor_factory=llguidance_factory)
    cfg = AgentConfig(max_policy_calls=4, max_tool_calls=3, structured_decoding=True, grounded_queries=True,
                      sampling=Sampling(temperature=1.0, seed=seed, max_tokens=2000))
    traj = Agent(policy, tools, cfg).run("a fox in the snow")
    seen = " ".join([traj.request] + [t.content for t in traj.turns if t.kind == "tool_response"])
    queries = [c.arguments["query"] for c in traj.tool_calls if c.name == "image_search"]
    assert queries  # an answer needs a retrieved image, and every seed here ends with one
    for query in queries:
        for word in query.split(" "):
            assert re.search(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", seen, flags=re.IGNORECASE), (word, seen)


# -- forced spans ------------------------------------------------------------------------------


def _reference_spans(text: str, byte_flags: list[bool]) -> list[tuple[int, int]]:
    """Forced characters from per-byte flags, grouped into runs (one character at a time)."""
    import itertools

    flags, at = [], 0
    for char in text:
        width = len(char.encode("utf-8"))
        flags.append(all(byte_flags[at:at + width]))
        at += width
    spans, i = [], 0
    for value, run in itertools.groupby(flags):
        n = len(list(run))
        if value:
            spans.append((i, i + n))
        i += n
    return spans


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40), cuts=st.lists(st.integers(min_value=1, max_value=160), max_size=12),
       counts=st.lists(st.integers(min_value=-1, max_value=6), min_size=1, max_size=12))
def test_forced_spans_mark_characters_whose_bytes_were_all_forced(text, cuts, counts):
    from genevolve.policy.guided import forced_spans

    data = text.encode("utf-8")
    bounds = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    tokens = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]  # may split a character
    pieces = [(t, counts[i % len(counts)]) for i, t in enumerate(tokens)]
    byte_flags = [j < n for t, n in pieces for j in range(len(t))]
    got_text, spans = forced_spans(pieces)
    assert got_text == text
    assert spans == _reference_spans(text, byte_flags)
    Turn(role="assistant", content=text, forced=spans)  # valid spans for a turn


def test_forced_spans_give_up_on_broken_utf8():
    from genevolve.policy.guided import forced_spans

    assert forced_spans([("é".encode()[:1], 1)]) == ("\ufffd", [])


def test_turn_rejects_bad_forced_spans():
    for spans in ([(0, 0)], [(2, 1)], [(0, 9)], [(3, 4), (1, 2)], [(0, 2), (1, 3)]):
        with pytest.raises(ValueError, match="forced spans"):
            Turn(role="assistant", content="abcdef", forced=spans)


@pytest.mark.parametrize("seed", range(3))
def test_replies_under_the_grammar_report_the_forced_scaffolding(tok, tools, seed):
    import asyncio

    policy = HFPolicy.from_objects(make_llama(tok, seed=seed), tok, logits_processor_factory=llguidance_factory)
    constraint = Constraint(kind="grammar", value=protocol_grammar(tools, ["IMG_003"], think_max_chars=40))
    sampling = Sampling(temperature=1.0, seed=seed, max_tokens=2000)
    reply = asyncio.run(policy.areply([Turn(role="user", content="draw a fox")], sampling=sampling, constraint=constraint))
    assert reply.text == policy.chat([Turn(role="user", content="draw a fox")], sampling=sampling, constraint=constraint)
    forced = [reply.text[a:b] for a, b in reply.forced]
    assert forced[0].startswith("<think>")  # every turn opens with it
    assert reply.forced[-1][1] == len(reply.text)  # and the closing tag, once begun, is forced to its end
    tail = "answer>" if "<answer>" in reply.text else "tool_call>"
    assert reply.text.endswith(tail) and forced[-1].endswith(tail)
    assert sum(b - a for a, b in reply.forced) < len(reply.text)  # the think text and the choices are free
    assert reply.forced_end  # after the closing tag only the end-of-turn token was allowed
    short = sampling.model_copy(update={"max_tokens": 16})
    plain = asyncio.run(policy.areply([Turn(role="user", content="draw a fox")], sampling=short))
    assert plain.forced == [] and not plain.forced_end  # no constraint, nothing forced
    # the sampled ids, which spell the text exactly (the end token left out); none when they cannot
    # (the unconstrained random model samples special tokens, which the text drops)
    assert reply.token_ids and tok.decode(reply.token_ids, skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False) == reply.text
    assert not plain.token_ids or tok.decode(plain.token_ids, clean_up_tokenization_spaces=False) == plain.text

