"""Reward mixing R = (1 - alpha) * R_image + alpha * R_program, protocol failures and their counts."""

from __future__ import annotations

import pytest

from genevolve.judge.base import Score
from genevolve.reward import Failure, Reward, count_failures, mix_reward, protocol_failure
from genevolve.types import Program, StopReason, Trajectory

GOOD = Score.from_dimensions(1, 1, None, 1)  # overall 0.8 (text N/A counts 0.5)


def test_default_mix_is_half_and_half():
    r = mix_reward(GOOD, 0.5)
    assert r.value == pytest.approx(0.5 * 0.8 + 0.5 * 0.5)
    assert (r.image, r.program, r.failure, r.alpha) == (pytest.approx(0.8), 0.5, None, 0.5)


@pytest.mark.parametrize(("alpha", "expected"), [(0.0, 0.8), (1.0, 0.25), (0.25, 0.75 * 0.8 + 0.25 * 0.25)])
def test_alpha_weights(alpha, expected):
    assert mix_reward(GOOD, 0.25, alpha=alpha).value == pytest.approx(expected)


def test_unweighted_component_may_be_missing():
    assert mix_reward(GOOD, None, alpha=0.0).value == pytest.approx(0.8)
    assert mix_reward(None, 0.75, alpha=1.0).value == 0.75


def test_missing_weighted_component_without_failure_is_a_bug():
    with pytest.raises(ValueError, match="program_score"):
        mix_reward(GOOD, None)
    with pytest.raises(ValueError, match="alpha"):
        mix_reward(GOOD, 0.5, alpha=1.5)


@pytest.mark.parametrize("failure", list(Failure))
def test_failures_score_zero_and_keep_what_was_judged(failure):
    r = mix_reward(GOOD, 1.0, failure=failure)
    assert r.value == 0.0 and r.failure == failure.value and r.image == pytest.approx(0.8)
    assert mix_reward(None, None, failure=failure).value == 0.0


def test_count_failures_by_reason_most_frequent_first():
    rewards = [mix_reward(GOOD, 1.0), mix_reward(None, None, failure="render_error"),
               mix_reward(None, None, failure=Failure.JUDGE_ERROR),
               mix_reward(None, None, failure=Failure.RENDER_ERROR)]
    assert count_failures(rewards) == {"render_error": 2, "judge_error": 1}
    assert list(count_failures(rewards)) == ["render_error", "judge_error"]
    assert count_failures([]) == {}


def test_reward_json_round_trip():
    r = mix_reward(GOOD, 0.5, failure=None)
    assert Reward.model_validate_json(r.model_dump_json()) == r


@pytest.mark.parametrize(("stop", "violations", "program", "expected"), [
    (StopReason.ANSWER, [], Program(gen_prompt="a fox"), None),
    (StopReason.NO_ANSWER, [], None, Failure.NO_ANSWER),
    (StopReason.POLICY_ERROR, [], None, Failure.POLICY_ERROR),
    (StopReason.INVALID_ANSWER, ["empty_prompt"], None, Failure.EMPTY_PROMPT),
    (StopReason.INVALID_ANSWER, ["sorted", "no_reference"], None, Failure.NO_REFERENCE),
    (StopReason.INVALID_ANSWER, [], None, Failure.INVALID_ANSWER),
    (StopReason.EMPTY_REQUEST, [], None, Failure.EMPTY_REQUEST),
])
def test_protocol_failure_from_trajectory(stop, violations, program, expected):
    traj = Trajectory(request="r", stop_reason=stop, violations=violations, program=program)
    assert protocol_failure(traj) == expected
