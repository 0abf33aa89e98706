"""ScriptedPolicy, the package's policy test double, and the policy backend table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genevolve.policy import POLICIES, Constraint, Policy, PolicyError, Sampling, build_policy
from genevolve.policy.scripted import ScriptedPolicy
from genevolve.registry import ConfigError
from genevolve.types import Turn

TURNS = [Turn(role="system", content="sys"), Turn(role="user", content="draw a fox")]


async def test_replies_in_order_and_records_calls():
    policy = ScriptedPolicy(["first", lambda turns: f"saw {len(turns)} turns"])
    sampling = Sampling(temperature=0.0, seed=3)
    constraint = Constraint(kind="regex", value="a+")
    assert await policy.achat(TURNS, sampling=sampling, constraint=constraint) == "first"
    assert await policy.achat(TURNS[:1], sampling=Sampling()) == "saw 1 turns"
    assert policy.calls == [TURNS, TURNS[:1]]
    assert policy.samplings[0] is sampling and policy.constraints == [constraint, None]
    assert policy.remaining == 0
    policy.assert_exhausted()


async def test_calls_are_snapshots():
    policy = ScriptedPolicy(["a"])
    turns = list(TURNS)
    await policy.achat(turns, sampling=Sampling())
    turns.append(Turn(role="assistant", content="a"))
    turns[0].content = "changed"
    assert [t.content for t in policy.calls[0]] == ["sys", "draw a fox"]


async def test_unexpected_call_fails_loudly():
    policy = ScriptedPolicy(["only"])
    await policy.achat(TURNS, sampling=Sampling())
    with pytest.raises(AssertionError, match=r"ScriptedPolicy: unexpected call #2 .*draw a fox"):
        await policy.achat(TURNS, sampling=Sampling())
    assert len(policy.calls) == 1


def test_unused_replies_fail_assert_exhausted():
    policy = ScriptedPolicy(["a", "b"])
    assert policy.chat(TURNS) == "a"
    with pytest.raises(AssertionError, match="1 of 2"):
        policy.assert_exhausted()


async def test_callable_can_simulate_backend_failure():
    def down(turns):
        raise PolicyError("server down")

    with pytest.raises(PolicyError, match="server down"):
        await ScriptedPolicy([down]).achat(TURNS, sampling=Sampling())


def test_table_and_builder():
    assert set(POLICIES) == {"openai", "hf", "embedded", "scripted", "world-expert", "direct"}
    policy = build_policy("scripted", responses=["x"], accepts_images=True)
    assert isinstance(policy, ScriptedPolicy) and isinstance(policy, Policy) and policy.accepts_images
    assert isinstance(build_policy("genevolve.policy.scripted:ScriptedPolicy", responses=[]), ScriptedPolicy)
    with pytest.raises(ConfigError, match="hf, openai, scripted"):
        build_policy("nope")


def test_import_stays_light():
    code = (
        "import sys, genevolve.policy, genevolve.policy.scripted, genevolve.policy.messages;"
        "heavy = {'torch', 'transformers', 'peft', 'openai', 'PIL'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
