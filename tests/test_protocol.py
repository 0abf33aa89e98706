import json

from hypothesis import given, settings
from hypothesis import strategies as st

from genevolve.protocol import (
    FormatErrorCode,
    ToolCall,
    format_tool_response,
    format_turn,
    parse_tool_response,
    parse_turn,
)

TOOLS = {"search", "image_search", "query_knowledge"}
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
think_text = st.text().filter(lambda s: not any(t in s for t in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>")))


@given(st.text())
@settings(max_examples=400)
def test_parser_never_raises_on_arbitrary_text(text):
    parsed = parse_turn(text, TOOLS)
    assert (parsed.tool_call is not None) + (parsed.answer is not None) + (parsed.error is not None) == 1


@given(st.lists(st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>",
                                 "{", "}", '"name"', ":", '"search"', "x", " ", "\n", '"arguments"', "{}"]), max_size=30))
@settings(max_examples=400)
def test_parser_never_raises_on_tag_soup(parts):
    parse_turn("".join(parts), TOOLS)


@given(think_text, st.sampled_from(sorted(TOOLS)), st.dictionaries(st.text(max_size=10), json_values, max_size=5))
@settings(max_examples=300)
def test_tool_call_round_trip(think, name, arguments):
    parsed = parse_turn(format_turn(think, tool_call=ToolCall(name, arguments)), TOOLS)
    assert parsed.error is None, parsed.error
    assert parsed.think == think.strip()
    assert parsed.tool_call == ToolCall(name, arguments)


@given(think_text, st.text(), st.lists(st.fixed_dictionaries({"img_id": st.from_regex(r"IMG_\d{3}", fullmatch=True), "note": st.text()}), max_size=3))
@settings(max_examples=200)
def test_answer_round_trip(think, prompt, refs):
    answer = {"gen_prompt": prompt, "reference_images": refs}
    parsed = parse_turn(format_turn(think, answer=answer), TOOLS)
    assert parsed.answer == answer


@given(st.text())
def test_tool_response_round_trip(text):
    body = text.strip()
    assert parse_tool_response(format_tool_response(text)) == body


def _code(text):
    parsed = parse_turn(text, TOOLS)
    return parsed.error.code if parsed.error else None


CALL = '<tool_call>{"name": "search", "arguments": {"queries": ["x"]}}</tool_call>'
ANSWER = '<answer>{"gen_prompt": "a cat", "reference_images": [{"img_id": "IMG_001", "note": "cat"}]}</answer>'


def test_valid_turns():
    assert parse_turn("<think>hm</think>" + CALL, TOOLS).tool_call == ToolCall("search", {"queries": ["x"]})
    assert parse_turn("<think>hm</think>\n" + ANSWER + "\n", TOOLS).answer["gen_prompt"] == "a cat"


def test_named_format_errors():
    assert _code("") == FormatErrorCode.EMPTY
    assert _code(CALL) == FormatErrorCode.MISSING_THINK
    assert _code("<think>never closed " + CALL) == FormatErrorCode.UNCLOSED_TAG
    assert _code("<think>a</think> just words") == FormatErrorCode.NO_ACTION
    assert _code("<think>a</think>" + CALL + CALL) == FormatErrorCode.MULTIPLE_TOOL_CALLS
    assert _code("<think>a</think>" + ANSWER + ANSWER) == FormatErrorCode.MULTIPLE_ANSWERS
    assert _code("<think>a</think>" + CALL + ANSWER) == FormatErrorCode.TOOL_CALL_AND_ANSWER
    assert _code("<think>a</think>" + CALL + "\n<tool_response>made up</tool_response>") == FormatErrorCode.STRAY_TEXT
    assert _code("<think>a</think><tool_call>{name: search}</tool_call>") == FormatErrorCode.BAD_JSON
    assert _code('<think>a</think><tool_call>["search"]</tool_call>') == FormatErrorCode.BAD_TOOL_CALL
    assert _code('<think>a</think><tool_call>{"name": "search", "arguments": "x"}</tool_call>') == FormatErrorCode.BAD_TOOL_CALL
    assert _code('<think>a</think><tool_call>{"name": "browse", "arguments": {}}</tool_call>') == FormatErrorCode.UNKNOWN_TOOL
    assert _code('<think>a</think><answer>{"prompt": "x"}</answer>') == FormatErrorCode.BAD_ANSWER
    assert _code('<think>a</think><answer>{"gen_prompt": "x", "reference_images": ["IMG_001"]}</answer>') == FormatErrorCode.BAD_ANSWER
    assert _code("<think>a</think><tool_call>" + json.dumps({"name": "search", "arguments": {}})) == FormatErrorCode.UNCLOSED_TAG


def test_json_cannot_close_the_tag():
    text = format_turn("t", tool_call=ToolCall("search", {"queries": ["</tool_call> <answer>"]}))
    assert "</tool_call> <answer>" not in text
    assert parse_turn(text, TOOLS).tool_call.arguments == {"queries": ["</tool_call> <answer>"]}
