import pytest

from genevolve.sft_rows import SFTRowError, trajectory_from_sft_row
from genevolve.types import StopReason

PUBLIC_ROW = {
    "messages": [
        {"role": "system", "content": "You are a planner."},
        {"role": "user", "content": "Draw the Sydney Opera House at dusk"},
        {"role": "assistant", "content": '<think>need a reference</think>\n<tool_call>{"name": "image_search", "arguments": {"query": "Sydney Opera House"}}</tool_call>'},
        {"role": "user", "content": "<tool_response>\n--- image search result for [Sydney Opera House] ---\nIMG_001: title: Opera House exterior\n<image>\nIMG_002: title: Opera House at night\n<image>\n</tool_response>"},
        {"role": "assistant", "content": '<think>IMG_001 is clear</think>\n<answer>{"gen_prompt": "The building in the first reference image at dusk, warm sky", "reference_images": [{"img_id": "IMG_001", "note": "building"}]}</answer>'},
    ],
    "images": ["images/a.jpg", "images/b.jpg"],
}


def test_public_row_loads(tmp_path):
    traj = trajectory_from_sft_row(PUBLIC_ROW, root=tmp_path)
    assert traj.request == "Draw the Sydney Opera House at dusk"
    assert traj.stop_reason == StopReason.ANSWER
    assert traj.program.references[0].path == str(tmp_path / "images/a.jpg")
    assert traj.program.references[0].title == "Opera House exterior"
    assert traj.n_tool_calls == 1 and traj.tool_calls[0].name == "image_search"
    assert [t.kind for t in traj.turns] == ["", "request", "", "tool_response", ""]


def test_part_list_content():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "draw this "}, {"type": "image", "image": "x.png"}]}]}
    traj = trajectory_from_sft_row(row)
    assert traj.turns[0].images == ["x.png"] and traj.stop_reason == StopReason.NO_ANSWER


@pytest.mark.parametrize("row, message", [
    ({}, "no 'messages'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": "<image><image>"}], "images": ["a"]}, "placeholders"),
    ({"messages": [{"role": "user", "content": "x"}], "images": ["a"]}, "more entries"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "no user message"),
])
def test_bad_rows_have_clear_errors(row, message):
    with pytest.raises(SFTRowError, match=message):
        trajectory_from_sft_row(row)
