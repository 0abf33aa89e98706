"""HFPolicy's batched decoding of concurrent calls, on tiny random models (CPU, no hub).

The expectation for every batched call is the same call decoded alone (one ``generate`` from scratch,
no cache, no batch): the same text and ids, log-probs equal to float rounding, and logits processors
called with exactly the ids they would see alone (never another row's, never padding).
"""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from genevolve.policy import Constraint, Sampling  # noqa: E402
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.types import Turn  # noqa: E402
from tests.test_policy_hf import GREEDY  # noqa: E402
from tests.test_policy_kv_cache import (  # noqa: E402
    LOGP_TOL,
    assert_same_turns,
    long_llama,
    recording_factory,
    rollout,
)


@pytest.mark.parametrize("kv_cache_tokens", [0, 100_000])
async def test_concurrent_rollouts_batched_equal_each_rollout_alone(tok, tools, kv_cache_tokens):
    model = long_llama(tok)
    seen_alone: list = []
    seen_batched: list = []
    alone = HFPolicy.from_objects(model, tok, logits_processor_factory=recording_factory(seen_alone))
    expected = [await asyncio.to_thread(rollout, alone, tools, seed) for seed in range(4)]
    batched = HFPolicy.from_objects(model, tok, logits_processor_factory=recording_factory(seen_batched),
                                    max_concurrency=4, batching=True, kv_cache_tokens=kv_cache_tokens)
    got = await asyncio.gather(*(asyncio.to_thread(rollout, batched, tools, seed) for seed in range(4)))
    for want, have in zip(expected, got, strict=True):
        assert_same_turns(want, have)
    assert sorted(seen_batched) == sorted(seen_alone)  # each grammar processor saw its own row's ids only
    batcher = batched._batcher
    assert batcher is not None and batcher.row_steps / batcher.steps > 1.5  # rows really shared steps
    await batched.aclose()
    assert not batcher._thread.is_alive()


class StopAfter:
    """A processor that records its ids and the model's scores, and after ``n`` picks allows only EOS (a row
    ending early); with ``fail_at`` it raises at that step instead (a broken constraint)."""

    def __init__(self, log: list, eos: int, n: int | None, fail_at: int | None = None):
        self.log, self.eos, self.n, self.fail_at = log, eos, n, fail_at
        self.prompt: int | None = None

    def __call__(self, input_ids, scores):
        assert input_ids.shape[0] == 1
        self.prompt = self.prompt or input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt
        self.log.append((input_ids[0].tolist(), scores[0].clone()))
        if step == self.fail_at:
            raise RuntimeError("broken constraint")
        if self.n is not None and step >= self.n:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.eos] = 0.0
        return scores


def stop_after_factory(logs: dict, eos: int):
    """``Constraint(kind="regex", value="name:stop:fail")``: a ``StopAfter`` logging under ``name``."""

    def factory(constraint, tokenizer):
        name, stop, fail = constraint.value.split(":")
        return StopAfter(logs.setdefault(name, []), eos, int(stop) if stop else None, int(fail) if fail else None)

    return factory


CALLS = [  # (name, prompt, constraint value, max_tokens): rows that end by EOS or budget at different steps
    ("a", "draw a fox", "a:3:", 12),
    ("b", "draw a red fox in the snow", "b::", 5),
    ("c", "fox", "c:9:", 12),
    ("d", "IMG_001: fox", "d::", 14),
    ("e", "draw a fox", "e:1:", 12),
]


async def _calls(policy, calls):
    async def one(name, prompt, value, max_tokens):
        turns = [Turn(role="system", content="You are an agent."), Turn(role="user", content=prompt)]
        sampling = Sampling(temperature=1.0, max_tokens=max_tokens, seed=len(name) + ord(name))
        return await policy.areply(turns, sampling=sampling, constraint=Constraint(kind="regex", value=value))

    return await asyncio.gather(*(one(*c) for c in calls), return_exceptions=True)


@pytest.mark.parametrize("kv_cache_tokens", [0, 100_000])
async def test_rows_end_on_their_own_and_processors_never_see_padding(tok, kv_cache_tokens):
    model = long_llama(tok, seed=3)
    logs_alone: dict = {}
    logs_batched: dict = {}
    alone = HFPolicy.from_objects(model, tok, logits_processor_factory=stop_after_factory(logs_alone, tok.eos_token_id))
    expected = [await _calls(alone, [c]) for c in CALLS]
    batched = HFPolicy.from_objects(model, tok, logits_processor_factory=stop_after_factory(logs_batched, tok.eos_token_id),
                                    max_concurrency=len(CALLS), batching=True, kv_cache_tokens=kv_cache_tokens)
    got = await _calls(batched, CALLS)
    assert [r.text for r in got] == [r[0].text for r in expected]
    assert [(r.stop_token_id, r.truncated) for r in got] == [(r[0].stop_token_id, r[0].truncated) for r in expected]
    assert {r.truncated for r in got} == {True, False}  # some rows ran out of budget, others stopped on EOS
    for want, have in zip(expected, got, strict=True):
        assert have.token_ids == want[0].token_ids
        assert max((abs(a - b) for a, b in zip(want[0].logprobs, have.logprobs, strict=True)), default=0.0) < LOGP_TOL
    assert logs_batched.keys() == logs_alone.keys()
    for name, steps in logs_alone.items():  # same ids at every step, none after a row ended, same scores
        assert [ids for ids, _ in logs_batched[name]] == [ids for ids, _ in steps]
        for (_, have), (_, want) in zip(logs_batched[name], steps, strict=True):
            assert torch.allclose(have, want, rtol=0, atol=1e-3)  # logits reach about 50 here: rounding ~1e-5
    assert batched._batcher.row_steps > batched._batcher.steps
    await batched.aclose()


async def test_a_failing_processor_fails_only_its_call(tok):
    model = long_llama(tok, seed=3)
    calls = [*CALLS[:3], ("x", "draw a fox", "x::2", 12)]
    alone = HFPolicy.from_objects(model, tok, logits_processor_factory=stop_after_factory({}, tok.eos_token_id))
    expected = [(await _calls(alone, [c]))[0] for c in calls]
    batched = HFPolicy.from_objects(model, tok, logits_processor_factory=stop_after_factory({}, tok.eos_token_id),
                                    max_concurrency=4, batching=True)
    got = await _calls(batched, calls)
    assert isinstance(expected[-1], RuntimeError) and isinstance(got[-1], RuntimeError)
    assert [r.text for r in got[:-1]] == [r.text for r in expected[:-1]]
    again = await _calls(batched, calls[:1])  # the worker is still serving
    assert again[0].text == expected[0].text
    await batched.aclose()


def test_models_whose_config_adds_processors_are_not_batched(tok):
    model = long_llama(tok)
    model.generation_config.repetition_penalty = 1.3  # generate would apply it; the batch loop does not
    assert HFPolicy.from_objects(model, tok, max_concurrency=2, batching=True)._batcher is None
    assert HFPolicy.from_objects(long_llama(tok), tok, max_concurrency=2, batching=True)._batcher is not None
    assert HFPolicy.from_objects(long_llama(tok), tok, max_concurrency=1, batching=True)._batcher is None


async def test_a_model_failure_fails_every_call_in_flight_and_the_worker_goes_on(tok):
    model = long_llama(tok)
    broken = {"on": True}

    def hook(module, args, kwargs):
        if broken["on"]:
            raise RuntimeError("out of memory")

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    policy = HFPolicy.from_objects(model, tok, max_concurrency=3, batching=True)
    turns = [Turn(role="user", content="draw a fox")]
    calls = [policy.areply(turns, sampling=Sampling(max_tokens=4, seed=s)) for s in range(3)]
    got = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60)
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in got)
    broken["on"] = False
    handle.remove()
    assert (await policy.areply(turns, sampling=GREEDY)).text == (await HFPolicy.from_objects(model, tok).areply(
        turns, sampling=GREEDY)).text
    await policy.aclose()
