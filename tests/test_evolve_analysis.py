"""Run analysis: spread over seeds, reward curves, rollouts-to-reach, and the teacher's token pushes."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genevolve.evolve.analysis import mean_std, moving_average, reward_curve, rollouts_to_reach, run_seconds

finite = st.floats(-10, 10, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=20))
def test_mean_std_is_the_sample_statistic(values):
    m, s = mean_std(values)
    assert m == pytest.approx(sum(values) / len(values), abs=1e-9)
    assert s == (pytest.approx(statistics.stdev(values), abs=1e-9) if len(values) > 1 else 0.0)
    with pytest.raises(ValueError):
        mean_std([])


@given(st.lists(finite, min_size=1, max_size=30), st.integers(1, 8))
def test_moving_average_matches_a_loop(values, window):
    expected = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                for i in range(len(values))]
    assert moving_average(values, window) == pytest.approx(expected, abs=1e-9)
    assert moving_average(values, 1) == pytest.approx(values)


def test_rollouts_to_reach():
    xs, ys = [16, 32, 48, 64], [0.1, 0.3, 0.2, 0.5]
    assert rollouts_to_reach(xs, ys, 0.3) == 32
    assert rollouts_to_reach(xs, ys, 0.3, window=2) == 64  # trailing means 0.1, 0.2, 0.25, 0.35
    assert rollouts_to_reach(xs, ys, 0.6) is None
    with pytest.raises(ValueError, match="length"):
        rollouts_to_reach(xs, ys[:2], 0.1)


def test_reward_curve_counts_rollouts_and_keeps_the_last_record_of_a_step(tmp_path):
    lines = [{"step": 0, "reward": 0.1, "rollouts": 16}, {"step": 1, "reward": 0.9, "rollouts": 16},
             {"step": 1, "reward": 0.2, "rollouts": 12}, {"step": 2, "reward": 0.3, "rollouts": 16}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    assert reward_curve(tmp_path) == ([16, 28, 44], [0.1, 0.2, 0.3])


def test_teacher_pushes_rank_tokens_by_the_guides_effect():
    torch = pytest.importorskip("torch")
    from genevolve.evolve.analysis import teacher_pushes
    from genevolve.evolve.tokens import ChatEncoder
    from genevolve.types import Turn
    from tests.test_policy_hf import make_llama, make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = make_llama(tok).eval()
    encoder = ChatEncoder(tok)
    turns = [Turn(role="system", content="You are a planner."), Turn(role="user", content="draw a red fox"),
             Turn(role="assistant", content="<think>search the fox</think>\n<answer>{}</answer>")]
    up, down, mean_abs = teacher_pushes(model, encoder, turns, "You are a planner. Count the foxes.", top=3)
    assert len(up) == len(down) == 3 and math.isfinite(mean_abs) and mean_abs > 0
    assert all(a.delta >= b.delta for a, b in zip(up, up[1:], strict=False))
    assert up[0].delta >= down[0].delta and down[0].delta == min(p.delta for p in down)
    same_up, _, same_abs = teacher_pushes(model, encoder, turns, "You are a planner.", top=3)
    assert same_abs == pytest.approx(0.0, abs=1e-5) and same_up[0].delta == pytest.approx(0.0, abs=1e-5)
    assert all(p.token in turns[2].content + encoder.end_of_turn for p in up + down)  # assistant tokens only


def test_copy_rate_counts_first_image_queries_that_reuse_request_words():
    from genevolve.evolve.analysis import content_words, copy_rate
    from genevolve.types import ToolCallRecord, Trajectory

    def traj(request, *queries):
        calls = [ToolCallRecord(round=i, name="image_search", arguments={"query": q}) for i, q in enumerate(queries)]
        return Trajectory(request=request, tool_calls=calls)

    assert content_words("The FLAG of Canada, with its maple leaf") == {"canada", "maple", "leaf"}
    runs = [traj("A statue: a cupcake carved from copper.", "cupcake", "copper"),
            traj("A statue: a cupcake carved from copper.", "flag of Austria", "cupcake"),  # only the first counts
            traj("The flag of the country whose capital is Ottawa.", "flag of Canada"),
            traj("Nothing searched")]
    assert copy_rate(runs) == (1, 3)
    assert copy_rate([]) == (0, 0)


def test_run_seconds_counts_each_step_once_for_both_kinds_of_run(tmp_path):
    evolve, sft = tmp_path / "evolve", tmp_path / "sft"
    evolve.mkdir()
    sft.mkdir()
    lines = [{"step": 0, "seconds": {"sample": 2.0, "update": 1.0}}, {"step": 1, "seconds": {"sample": 9.0}},
             {"step": 1, "seconds": {"sample": 4.0, "update": 0.5}}]  # step 1 again after a resume
    (evolve / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run_seconds(evolve) == pytest.approx(7.5)
    lines = [{"step": 1, "kind": "train", "seconds": 1.5}, {"step": 2, "kind": "train", "seconds": 2.0},
             {"step": 2, "kind": "eval", "eval_loss": 0.4}]
    (sft / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run_seconds(sft) == pytest.approx(3.5)


def _metrics(folder, rewards):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": r, "rollouts": 4}) + "\n"
                                                  for s, r in rewards.items()))
    return folder


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=40),
       st.floats(min_value=-0.5, max_value=0.5))
def test_paired_difference_against_a_shifted_copy(tmp_path_factory, rewards, shift):
    from genevolve.evolve.analysis import paired_difference

    root = tmp_path_factory.mktemp("paired")
    control = _metrics(root / "control", dict(enumerate(rewards)))
    run = _metrics(root / "run", {s: r + shift for s, r in enumerate(rewards)})
    paired = paired_difference(run, control)
    assert paired.steps == list(range(len(rewards)))
    assert paired.mean == pytest.approx(shift, abs=1e-9)
    assert paired.sem == pytest.approx(0, abs=1e-9)
    parts = paired.parts(3)
    assert len(parts) == min(3, len(rewards)) and all(p == pytest.approx(shift, abs=1e-9) for p in parts)
    same = paired_difference(control, control)
    assert same.mean == 0 and same.wins == same.losses == 0 and same.sign_p == 1.0


def test_paired_difference_counts_and_sign_test(tmp_path):
    from genevolve.evolve.analysis import paired_difference

    control = _metrics(tmp_path / "c", {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2, 5: 0.2, 9: 0.5})
    run = _metrics(tmp_path / "r", {0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3, 4: 0.3, 5: 0.1, 7: 0.9})
    paired = paired_difference(run, control)
    assert paired.steps == [0, 1, 2, 3, 4, 5]  # steps only one run has are left out
    assert (paired.wins, paired.losses) == (5, 1)
    assert paired.sign_p == pytest.approx(2 * 7 / 64)  # P(X <= 1) for X ~ Bin(6, 1/2), both tails
    assert paired.mean == pytest.approx((5 * 0.1 - 0.1) / 6)
    with pytest.raises(ValueError, match="no step in common"):
        paired_difference(run, _metrics(tmp_path / "none", {20: 0.1}))


def test_paired_difference_of_another_metric(tmp_path):
    from genevolve.evolve.analysis import paired_difference

    def run(folder, calls):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "reward": 0.2, "policy_calls": c, "rollouts": 4}) + "\n" for s, c in enumerate(calls)))
        return folder

    control, trained = run(tmp_path / "c", [6.0, 6.0, 5.0]), run(tmp_path / "r", [5.5, 5.0, 5.0])
    paired = paired_difference(trained, control, "policy_calls")
    assert paired.diffs == pytest.approx([-0.5, -1.0, 0.0]) and (paired.wins, paired.losses) == (0, 2)
    assert paired_difference(trained, control).diffs == [0.0] * 3  # the reward is the default
    with pytest.raises(ValueError, match="no number 'tool_calls'"):
        paired_difference(trained, control, "tool_calls")
