"""HFPolicy's prefix KV cache on tiny random models (CPU, no hub).

The expectations come from outside the cache: the same model decoding each call from scratch
(``kv_cache_tokens=0``, one ``generate`` over the whole prompt), and reuse counts derived from the
prompts' own lengths. Replies must match to the token and log-probs to float rounding.
"""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from genevolve.agent import Agent, AgentConfig  # noqa: E402
from genevolve.policy import Sampling  # noqa: E402
from genevolve.policy.guided import llguidance_factory  # noqa: E402
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.policy.kv_cache import PrefixCache, supports_prefix_cache  # noqa: E402
from genevolve.types import Turn  # noqa: E402
from tests.test_policy_hf import llava, text_config  # noqa: E402, F401 (llava: a fixture)

LOGP_TOL = 1e-4  # float rounding reaches a few 1e-6 here (logits scaled up, see long_llama); a bug, about 1


def long_llama(tok, seed: int = 0):
    """A tiny random Llama with room for the agent's system prompt (about a token per character here).

    Its output layer is scaled up: a freshly initialised model's logits are nearly uniform (std about 0.1),
    so every sampling step sits next to hundreds of near-ties and float rounding alone (a cached vs a
    recomputed state, a padded batch) would change some draws. With peaked logits, as a trained model has,
    a different draw means a real difference."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**text_config(tok), "max_position_embeddings": 32768})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


class Recorder:
    """Wraps a logits processor and records the ``input_ids`` it is called with (one list per step)."""

    def __init__(self, inner, log: list):
        self.inner, self.log = inner, log

    def __call__(self, input_ids, scores):
        self.log.append(input_ids.tolist())
        return self.inner(input_ids, scores)

    def __getattr__(self, name):  # forced_bytes, single_choice: what the policy reads after decoding
        return getattr(self.inner, name)


def recording_factory(log: list):
    return lambda constraint, tokenizer: Recorder(llguidance_factory(constraint, tokenizer), log)


def rollout(policy, tools, seed: int):
    """A grammar-constrained agent rollout; think text is kept short so that each turn is a few dozen tokens."""
    policy.think_max_chars = 30
    cfg = AgentConfig(max_policy_calls=4, max_tool_calls=3, structured_decoding=True, grounded_queries=True, prompt="compact",
                      sampling=Sampling(temperature=1.0, top_p=0.95, seed=seed, max_tokens=400))
    return Agent(policy, tools, cfg).run("a fox in the snow", seed=seed)


def assistant_turns(traj):
    return [(i, t) for i, t in enumerate(traj.turns) if t.role == "assistant"]


def assert_same_turns(expected, got):
    """Same text, sampled ids, forced spans and stop; log-probs equal to float rounding."""
    pairs = list(zip(assistant_turns(expected), assistant_turns(got), strict=True))
    assert pairs
    for (_, want), (_, have) in pairs:
        assert have.content == want.content
        assert (have.token_ids, have.stop_token_id, have.forced, have.forced_end) == (
            want.token_ids, want.stop_token_id, want.forced, want.forced_end)
        assert len(have.logprobs) == len(want.logprobs) > 0
        assert max(abs(a - b) for a, b in zip(have.logprobs, want.logprobs, strict=True)) < LOGP_TOL


@pytest.mark.parametrize("seed", [1, 2])
def test_each_prompt_extends_the_previous_prompt_and_its_sampled_ids(tok, tools, seed):
    """The property the cache relies on: turn k+1's prompt starts with turn k's prompt and the ids sampled there."""
    policy = HFPolicy.from_objects(long_llama(tok), tok, logits_processor_factory=llguidance_factory)
    traj = rollout(policy, tools, seed)
    turns = assistant_turns(traj)
    assert len(turns) >= 2
    for (i, turn), (j, _) in zip(turns, turns[1:], strict=False):
        before = policy.encoder.prompt(traj.turns[:i]).input_ids
        after = policy.encoder.prompt(traj.turns[:j]).input_ids
        assert turn.token_ids
        assert after[: len(before) + len(turn.token_ids)] == before + turn.token_ids


@pytest.mark.parametrize("seed", [1, 2])
def test_cached_rollout_equals_uncached_and_reuses_the_previous_turn(tok, tools, seed):
    model = long_llama(tok)
    seen_plain: list = []
    seen_cached: list = []
    plain = HFPolicy.from_objects(model, tok, logits_processor_factory=recording_factory(seen_plain))
    cached = HFPolicy.from_objects(model, tok, logits_processor_factory=recording_factory(seen_cached),
                                   kv_cache_tokens=100_000)
    expected = rollout(plain, tools, seed)
    got = rollout(cached, tools, seed)
    assert_same_turns(expected, got)
    assert seen_cached == seen_plain  # the grammar processor saw the same ids at every step

    # what a hit must reuse: the previous prompt and the ids sampled after it, less the last (never fed back)
    reused = []
    prev = None
    for i, turn in assistant_turns(got):
        prompt = cached.encoder.prompt(got.turns[:i]).input_ids
        n_new = len(turn.token_ids) + (turn.stop_token_id is not None)
        reused.append((len(prompt), 0 if prev is None else prev))
        prev = len(prompt) + n_new - 1
    assert cached.kv_cache.stats.per_call == reused
    assert cached.kv_cache.n_tokens == prev  # one entry left: older ones were its prefixes


async def test_concurrent_cached_calls_match_uncached(tok):
    model = long_llama(tok)
    turns = [Turn(role="system", content="You are an agent."), Turn(role="user", content="draw a fox")]
    samplings = [Sampling(temperature=1.0, max_tokens=10, seed=s) for s in (1, 2, 3, 1, 4)]
    plain = HFPolicy.from_objects(model, tok)
    expected = [await plain.areply(turns, sampling=s) for s in samplings]
    cached = HFPolicy.from_objects(model, tok, kv_cache_tokens=100_000, max_concurrency=3)
    for _ in range(2):  # the second round hits the entries the first stored
        got = await asyncio.gather(*(cached.areply(turns, sampling=s) for s in samplings))
        assert [r.text for r in got] == [r.text for r in expected]
        for want, have in zip(expected, got, strict=True):
            assert max(abs(a - b) for a, b in zip(want.logprobs, have.logprobs, strict=True)) < LOGP_TOL
    assert cached.kv_cache.stats.hit_tokens > 0
    await cached.aclose()


def test_changed_weights_empty_the_cache(tok):
    model = long_llama(tok)
    turns = [Turn(role="system", content="You are an agent."), Turn(role="user", content="draw a fox")]
    sampling = Sampling(temperature=1.0, max_tokens=8, seed=5)
    cached = HFPolicy.from_objects(model, tok, kv_cache_tokens=100_000)
    first = asyncio.run(cached.areply(turns, sampling=sampling))
    with torch.no_grad():  # a training step updates the weights in place like this
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.mul_(-2.0)
    reply = asyncio.run(cached.areply(turns, sampling=sampling))  # the whole prompt is a prefix of the entry
    expected = asyncio.run(HFPolicy.from_objects(model, tok).areply(turns, sampling=sampling))
    assert reply.token_ids == expected.token_ids
    assert max(abs(a - b) for a, b in zip(reply.logprobs, expected.logprobs, strict=True)) < LOGP_TOL
    assert max(abs(a - b) for a, b in zip(first.logprobs, expected.logprobs, strict=False)) > 0.1  # it mattered
    assert cached.kv_cache.stats.cleared == 1


def _layers(n: int, fill: float = 0.0):
    return [(torch.full((1, 2, n, 4), fill), torch.full((1, 2, n, 4), fill)) for _ in range(2)]


def test_prefix_cache_budget_lru_and_prefixes():
    cache = PrefixCache(max_tokens=10)
    cache.store([1, 2, 3], _layers(3, 1.0))
    cache.store([1, 2, 3, 4, 5], _layers(5, 2.0))  # covers [1, 2, 3]: that entry goes
    assert (len(cache), cache.n_tokens) == (1, 5)
    cache.store([1, 2, 3], _layers(3))  # already covered: nothing new
    assert (len(cache), cache.n_tokens) == (1, 5)
    n, layers, _ = cache.lookup([1, 2, 3, 4, 5])
    assert n == 4 and float(layers[0][0][0, 0, 0, 0]) == 2.0  # the last token is always recomputed
    assert cache.lookup([1, 2, 9])[0] == 2 and cache.lookup([7, 1])[0] == 0
    cache.store([7, 8, 9, 10], _layers(4))
    cache.lookup([1, 2, 3, 4, 5, 6])  # touch the first entry: the [7, ...] one is now the oldest
    cache.store([5, 5, 5], _layers(3))  # 5 + 4 + 3 > 10: the least recently used entry goes
    assert cache.n_tokens == 8 and cache.lookup([7, 8, 9])[0] == 0 and cache.lookup([1, 2, 3, 4, 5, 6])[0] == 5
    cache.store(list(range(11)), _layers(11))  # larger than the whole budget: not kept
    assert cache.n_tokens == 8
    with pytest.raises(ValueError, match="positions"):
        cache.store([1, 2], _layers(3))


def test_a_reply_entry_leaves_when_its_next_turn_takes_it_up():
    cache = PrefixCache(max_tokens=100)
    cache.store([1, 2, 3, 4], _layers(4), continuation=True)  # prompt [1, 2] and a reply [3, 4]
    assert cache.lookup([1, 2, 9])[0] == 2 and len(cache) == 1  # another reply to the same prompt: it stays
    assert cache.lookup([1, 2, 3, 4, 5, 6])[0] == 4 and len(cache) == 0  # the next turn: its caller holds it now
    cache.store([1, 2], _layers(2))  # a prompt, shared by every rollout of a request
    assert cache.lookup([1, 2, 7])[0] == 2 and cache.lookup([1, 2, 8])[0] == 2 and len(cache) == 1


def test_no_cache_for_vlms_and_sliding_windows(tok, llava):  # noqa: F811 (the imported fixture)
    model, processor = llava
    assert HFPolicy.from_objects(model, processor=processor, kv_cache_tokens=1000).kv_cache is None
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(**text_config(tok), sliding_window=16))
    assert not supports_prefix_cache(mistral)
    assert supports_prefix_cache(long_llama(tok))
