"""Time the embedded stack: cold vs warm `genevolve run`, grammar vs plain decoding, the policy's prefix
cache and batching (before vs after, in one process), peak memory.

    python benchmarks/embedded_speed.py                     # everything (cold + warm: ~10+ min on 2 cores)
    python benchmarks/embedded_speed.py --quick             # no cold run, 2 decode contexts, 2 policy calls
    python benchmarks/embedded_speed.py --json speed.json   # also write the figures as JSON

CLI runs: ``genevolve run REQUEST --seed S`` in a child process. Cold is the first run in an empty
temporary ``GENEVOLVE_CACHE`` (GGUF conversion and index builds included), warm the second run on the
same cache; both use the same seed, so they decode the same turns; "warm, no cache" repeats the warm run
with the policy's prefix cache off (``kv_cache_tokens: 0``, the path before it). Phases come from the run's
trajectory.json (policy, tools, total = the agent loop); "outside" is wall time minus the agent loop
(imports, model load, rendering, writing). Peak memory is the child's max RSS (``os.wait4``).
With ``--quick`` the runs use ``--cache`` (default: your cache root), primed by one untimed run
if the model is not converted there yet.

Decode speed (in this process, on the warm cache): the embedded policy on realistic agent contexts
(genevolve's system prompt with a request; one mid-rollout context with a real image_search
response; one final-step context), greedy. The constrained run decodes under the agent's own grammar
for that state and stops when the grammar completes; the plain run is then forced to decode exactly as
many tokens (EOS suppressed), so both cover the same positions and their tokens/s compare directly.
Tokens/s count generated token ids and exclude prefill and the first step (timed from the second
logits-processor call). Mask ms is the grammar processor's own time per token (consume the last
token, fill the bitmask, apply it). Setup is what a turn pays once: building the processor plus the
first mask's excess over a typical one (llguidance compiles lazily there; the first tool grammar in a
process costs seconds, later ones milliseconds); the verdict is given without and with it.

Policy calls (each case in a child process that builds the embedded policy, makes one untimed warm-up
call, then starts from an empty prefix cache): the agent loop with the embedded tools on ``--request``. One
rollout (seed 0) with the prefix cache off (before) and on (after): policy seconds per call and generated
tokens/s. Then K = ``--rollouts`` concurrent rollouts (seeds 0..K-1, ``max_concurrency`` K): one
``generate`` per thread without the cache (before), with it, and batched (``batching``) without and with
it (after): rollouts per minute, the share of prompt tokens the cache supplied, the mean batch. Each pair
is also compared turn by turn (same seeds): turns that say the same up to each rollout's first
difference, and the largest log-prob gap, which is float rounding (batch shapes, cached vs recomputed
states). Max RSS is the case's child process's (``os.wait4``).

Timings on a shared 2-core machine are fragile: torch runs 2 threads, and another busy process can
slow decoding several-fold, so the 1-minute load average is recorded before each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST = "The flag of Japan on a wooden pole"
DECODE_REQUESTS = [
    "Four green apples in a row on a white table",
    'A shop sign that reads "NO PARKING" next to a red car',
    "A cat on the left and a dog on the right, watercolor",
]
MEMORY_TARGET_MB = 3 * 1024
CONSTRAINT_COST_TARGET = 0.20


# -- CLI runs -------------------------------------------------------------------------------------


def genevolve_cmd() -> list[str]:
    script = Path(sys.executable).with_name("genevolve")
    if script.is_file():
        return [str(script)]
    found = shutil.which("genevolve")
    return [found] if found else [sys.executable, "-m", "genevolve.cli"]


def run_child(cmd: list[str], out: Path, cache: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with ``GENEVOLVE_CACHE=cache``, output in ``out``: exit code, wall seconds, its max RSS in MB."""
    env = {**os.environ, "GENEVOLVE_CACHE": str(cache)}
    with open(out / "stdout.txt", "wb") as stdout, open(out / "stderr.txt", "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
        try:  # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave the child decoding in the background
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
    return (os.waitstatus_to_exitcode(status), wall,
            usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024))


def cli_run(label: str, request: str, out: Path, cache: Path, *, seed: int, config: Path | None) -> dict[str, Any]:
    """One ``genevolve run`` in a child process: wall time, max RSS, and the trajectory's timings."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*genevolve_cmd(), "run", request, "--out", str(out), "--seed", str(seed), "--quiet"]
    if config is not None:
        cmd += ["--config", str(config)]
    print(f"[{label}] {' '.join(cmd[1:])}  (GENEVOLVE_CACHE={cache})", flush=True)
    load_before = os.getloadavg()[0]
    rc, wall, rss_mb = run_child(cmd, out, cache)
    row: dict[str, Any] = {"run": label, "rc": rc, "wall_s": wall, "max_rss_mb": rss_mb,
                           "load_before": load_before}
    traj_path = out / "trajectory.json"
    if traj_path.is_file():
        traj = json.loads(traj_path.read_text(encoding="utf-8"))
        timings = traj.get("timings", {})
        row |= {f"{k}_s": timings.get(k) for k in ("policy", "tools", "total")}
        row["outside_s"] = wall - timings["total"] if "total" in timings else None
        row |= {k: traj.get(k) for k in ("stop_reason", "n_policy_calls", "n_tool_calls")}
        said = "\n".join(t["content"] for t in traj.get("turns", []) if t.get("role") == "assistant")
        row["assistant_sha"] = hashlib.sha256(said.encode()).hexdigest()[:12]
    else:
        print(f"[{label}] no trajectory.json; stderr tail:\n{(out / 'stderr.txt').read_text()[-2000:]}", flush=True)
    row["image"] = (out / "image.png").is_file()
    return row


def model_converted(cache: Path) -> bool:
    from genevolve.policy.embedded import MODEL_DIR_NAME

    return (cache / "models" / MODEL_DIR_NAME / "config.json").is_file()


def print_cli(rows: list[dict[str, Any]]) -> None:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    print(f"\n{'run':15s} {'wall s':>8s} {'policy s':>9s} {'tools s':>8s} {'agent s':>8s} {'outside s':>10s} "
          f"{'max RSS MB':>11s} {'calls':>6s} {'load':>5s}  stop")
    for r in rows:
        calls = f"{r.get('n_policy_calls', '-')}/{r.get('n_tool_calls', '-')}"
        print(f"{r['run']:15s} {f(r['wall_s']):>8s} {f(r.get('policy_s')):>9s} {f(r.get('tools_s')):>8s} "
              f"{f(r.get('total_s')):>8s} {f(r.get('outside_s')):>10s} {r['max_rss_mb']:11.0f} {calls:>6s} "
              f"{r['load_before']:5.2f}  "
              f"{r.get('stop_reason', '-')} (rc {r['rc']}{', image' if r['image'] else ''})")


# -- decode speed ---------------------------------------------------------------------------------


class StepClock:
    """No-op logits processor: timestamps every decode step (one call per generated token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.times.append(time.perf_counter())
        return scores


class Timed:
    """Wraps a logits processor and records the seconds of each call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        start = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds.append(time.perf_counter() - start)
        return out


@dataclass
class Decode:
    tokens: int
    prefill_s: float  # generate() start to the first processor call (the prompt's forward pass)
    decode_s: float  # first processor call to the end: tokens - 1 forward passes
    steady_s: float  # second processor call to the end: without the first step's one-off work
    text: str
    mask_s: list[float] = field(default_factory=list)
    compile_s: float = 0.0

    @property
    def steady_tok_s(self) -> float:
        return (self.tokens - 2) / self.steady_s if self.tokens > 2 and self.steady_s > 0 else float("nan")

    @property
    def setup_s(self) -> float:
        """Grammar setup paid by this turn: building the processor plus its first mask (where llguidance
        compiles lazily) minus a typical mask."""
        return self.compile_s + (self.mask_s[0] - statistics.median(self.mask_s) if self.mask_s else 0.0)


def decode(policy: Any, inputs: Any, max_new: int, *, constraint: Any = None, exact: bool = False) -> Decode:
    """Greedy ``generate`` with a step clock and, with ``constraint``, the policy's timed grammar processor.
    ``exact``: suppress EOS so that exactly ``max_new`` tokens are decoded."""
    import torch
    from transformers import LogitsProcessorList

    clock, timed, compile_s = StepClock(), None, 0.0
    processors = LogitsProcessorList([clock])
    if constraint is not None:
        start = time.perf_counter()
        timed = Timed(policy.logits_processor_factory(constraint, policy.tokenizer))
        compile_s = time.perf_counter() - start
        processors.append(timed)
    tok = policy.tokenizer
    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False,
                              "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if getattr(policy.model.generation_config, "eos_token_id", None) is None:
        kwargs["eos_token_id"] = tok.eos_token_id
    if exact:
        kwargs["min_new_tokens"] = max_new
    start = time.perf_counter()
    with torch.inference_mode():
        out_B_T = policy.model.generate(**inputs, logits_processor=processors, **kwargs)
    end = time.perf_counter()
    new_T = out_B_T[0, inputs["input_ids"].shape[1]:]
    first = clock.times[0] if clock.times else end
    second = clock.times[1] if len(clock.times) > 1 else end
    return Decode(tokens=int(new_T.shape[0]), prefill_s=first - start, decode_s=end - first, steady_s=end - second,
                  text=tok.decode(new_T, skip_special_tokens=True),
                  mask_s=timed.seconds if timed else [], compile_s=compile_s)


def decode_contexts(agent: Any, n_first: int, final_step: bool) -> list[tuple[str, list[Any], Any]]:
    """(label, turns, grammar constraint) for first turns, a mid-rollout turn and a final-step turn."""
    from genevolve import prompts
    from genevolve.agent import RolloutState, format_image_lines
    from genevolve.protocol import ToolCall, format_tool_response, format_turn
    from genevolve.types import Turn

    def start(request: str) -> list[Turn]:
        return [Turn(role="system", content=agent.system_prompt), Turn(role="user", content=request, kind="request")]

    out = []
    for request in DECODE_REQUESTS[:n_first]:
        constraint = agent.constraint_factory(RolloutState(request=request, round=1))
        out.append((f"first: {request[:28]}", start(request), constraint))
    request, query = DECODE_REQUESTS[0], "green apple"
    tool = agent.tools["image_search"]
    obs = asyncio.run(tool.acall(tool.Args(query=query, top_k=5)))
    state = RolloutState(request=request, round=2, n_tool_calls=1)
    images = [state.register(im) for im in obs.images]
    call = format_turn("I need a picture of a green apple to show the right fruit.",
                       tool_call=ToolCall("image_search", {"query": query, "top_k": 5}))
    response = format_tool_response(format_image_lines(query, obs.text, images, with_images=False))
    turns = [*start(request), Turn(role="assistant", content=call), Turn(role="user", content=response,
                                                                          kind="tool_response")]
    out.append((f"mid-rollout ({len(images)} images)", turns, agent.constraint_factory(state)))
    if final_step:
        state.final = True
        final = [*turns, Turn(role="user", content=prompts.final_step_message(), kind="final_step")]
        out.append(("final step (answer only)", final, agent.constraint_factory(state)))
    return out


def decode_bench(cache: Path, *, max_tokens: int, repeats: int, quick: bool) -> dict[str, Any]:
    os.environ["GENEVOLVE_CACHE"] = str(cache)
    import torch
    import transformers

    from genevolve.config import build_agent, load_config
    from genevolve.policy.guided import ll_tokenizer

    transformers.logging.set_verbosity_error()
    agent = build_agent(load_config())
    policy = agent.policy
    start = time.perf_counter()
    ll_tokenizer(policy.tokenizer)
    llg_tokenizer_s = time.perf_counter() - start
    contexts = decode_contexts(agent, 1 if quick else len(DECODE_REQUESTS), final_step=not quick)
    decode(policy, policy.encode(contexts[0][1]), 4)  # warm-up: first-call allocations
    load_before = os.getloadavg()[0]

    rows = []
    for label, turns, constraint in contexts:
        inputs = policy.encode(turns)
        cs, ps = [], []
        for _ in range(repeats):  # alternate the modes so that a burst of outside load hits both
            cs.append(decode(policy, inputs, max_tokens, constraint=constraint))
            ps.append(decode(policy, inputs, cs[-1].tokens, exact=True))
        # steady rates: the fastest repeat (the machine may be shared); setup: the first use, as a rollout pays it
        c = min(cs, key=lambda d: d.steady_s)
        p = min(ps, key=lambda d: d.steady_s)
        masks_ms = [x * 1000 for x in c.mask_s]
        rows.append({
            "context": label, "prompt_tokens": int(inputs["input_ids"].shape[1]), "tokens": c.tokens,
            "grammar_complete": c.tokens < max_tokens, "prefill_s": p.prefill_s,
            "plain_tok_s": p.steady_tok_s, "constrained_tok_s": c.steady_tok_s,
            "ratio": c.steady_tok_s / p.steady_tok_s,
            "mask_ms_median": statistics.median(masks_ms), "mask_ms_mean": statistics.mean(masks_ms[1:] or masks_ms),
            "mask_share": sum(c.mask_s[1:]) / c.steady_s,
            "setup_ms_first_use": cs[0].setup_s * 1000, "setup_ms_min": min(d.setup_s for d in cs) * 1000,
            "plain_steady_s": p.steady_s, "constrained_steady_s": c.steady_s,
            "constrained_text": c.text, "plain_text": p.text,
        })
    steps = sum(r["tokens"] - 2 for r in rows)
    plain_s = sum(r["plain_steady_s"] for r in rows)
    constrained_s = sum(r["constrained_steady_s"] for r in rows)
    setup_s = sum(r["setup_ms_first_use"] for r in rows) / 1000
    cost = 1 - plain_s / constrained_s
    cost_setup = 1 - plain_s / (constrained_s + setup_s)
    return {"torch_threads": torch.get_num_threads(), "max_tokens": max_tokens, "repeats": repeats,
            "load_before": load_before, "llg_tokenizer_s": llg_tokenizer_s, "contexts": rows,
            "overall": {"steps": steps, "plain_tok_s": steps / plain_s, "constrained_tok_s": steps / constrained_s,
                        "ratio": plain_s / constrained_s, "constraint_cost": cost,
                        "setup_s_first_use": setup_s, "constraint_cost_with_setup": cost_setup,
                        "target": CONSTRAINT_COST_TARGET, "within_target": cost < CONSTRAINT_COST_TARGET,
                        "within_target_with_setup": cost_setup < CONSTRAINT_COST_TARGET}}


def print_decode(d: dict[str, Any]) -> None:
    print(f"\ndecode speed (greedy, max_tokens {d['max_tokens']}, best of {d['repeats']}, "
          f"{d['torch_threads']} torch threads, load {d['load_before']:.2f}; llguidance tokenizer built once in "
          f"{d['llg_tokenizer_s']:.2f} s)")
    print(f"{'context':30s} {'prompt':>6s} {'tokens':>6s} {'prefill s':>9s} {'plain t/s':>9s} {'gramm t/s':>9s} "
          f"{'ratio':>6s} {'mask ms':>7s} {'mask %':>6s} {'setup ms':>9s}")
    for r in d["contexts"]:
        done = "" if r["grammar_complete"] else "+"
        print(f"{r['context'][:30]:30s} {r['prompt_tokens']:6d} {str(r['tokens']) + done:>6s} {r['prefill_s']:9.2f} "
              f"{r['plain_tok_s']:9.1f} {r['constrained_tok_s']:9.1f} {r['ratio']:6.2f} {r['mask_ms_median']:7.2f} "
              f"{r['mask_share']:6.1%} {r['setup_ms_first_use']:9.0f}")
    o = d["overall"]
    print(f"steady decoding: plain {o['plain_tok_s']:.1f} tok/s, constrained {o['constrained_tok_s']:.1f} tok/s: "
          f"the grammar costs {o['constraint_cost']:.0%} of plain speed "
          f"({'within' if o['within_target'] else 'NOT within'} the {o['target']:.0%} target)")
    print(f"with grammar setup ({o['setup_s_first_use']:.2f} s over these turns, mostly llguidance's lazy compile "
          f"at a process's first tool grammar): {o['constraint_cost_with_setup']:.0%} "
          f"({'within' if o['within_target_with_setup'] else 'NOT within'} the target)")
    print("t/s exclude prefill and the first step; mask ms: median per token; mask %: share of constrained decode "
          "time; setup ms: processor build + first-mask excess, on first use")
    if any(not r["grammar_complete"] for r in d["contexts"]):
        print("+ : hit max_tokens before the grammar completed")


# -- policy calls: prefix cache and batching ------------------------------------------------------


def embedded_config(budget: int | None, **policy: Any) -> dict[str, Any]:
    """The embedded stack with these policy options. A config that names a policy gets none of the embedded
    agent's settings, so the whole stack is written out."""
    from genevolve.defaults import embedded_defaults

    data = embedded_defaults()
    data["policy"] |= policy
    if budget is not None:
        data["agent"]["max_policy_calls"] = budget
    return data


def rollout_case(request: str, k: int, budget: int | None, policy: dict[str, Any]) -> dict[str, Any]:
    """K concurrent rollouts of ``request`` (seeds 0..K-1) on a freshly built embedded policy (run in a child
    process, so each case has its own peak RSS): timings and each rollout's assistant turns."""
    from genevolve.agent import RolloutState
    from genevolve.config import build_agent, load_config
    from genevolve.policy import Sampling
    from genevolve.types import Turn

    agent = build_agent(load_config(overrides=embedded_config(budget, max_concurrency=k, **policy)))
    pol = agent.policy
    warm = [Turn(role="system", content=agent.system_prompt), Turn(role="user", content=DECODE_REQUESTS[2])]
    asyncio.run(pol.areply(warm, sampling=Sampling(max_tokens=8, seed=0),  # untimed: first-call work, grammar compile
                           constraint=agent.constraint_factory(RolloutState(request=DECODE_REQUESTS[2], round=1))))
    if pol.kv_cache is not None:  # start from an empty cache, as a fresh process would
        pol.kv_cache.clear()
        pol.kv_cache.stats.__init__()
    load_before = os.getloadavg()[0]

    async def rollouts() -> list:
        return list(await asyncio.gather(*(agent.arun(request, seed=s) for s in range(k))))

    start = time.perf_counter()
    trajs = asyncio.run(rollouts())
    wall = time.perf_counter() - start
    turns = [[(t.content, t.logprobs) for t in traj.turns if t.role == "assistant"] for traj in trajs]
    tokens = sum(len(t.token_ids or pol.tokenizer(t.content, add_special_tokens=False)["input_ids"])
                 + (t.stop_token_id is not None) for traj in trajs for t in traj.turns if t.role == "assistant")
    calls = sum(traj.n_policy_calls for traj in trajs)
    batcher = pol._batcher
    return {"rollouts": k, "wall_s": wall, "rollouts_per_min": k / wall * 60, "calls": calls,
            "policy_s_per_call": sum(traj.timings["policy"] for traj in trajs) / max(calls, 1),
            "tokens": tokens, "tok_s": tokens / wall, "load_before": load_before,
            "prompt_tokens_reused": pol.kv_cache.stats.hit_rate if pol.kv_cache is not None else 0.0,
            "mean_batch": batcher.row_steps / batcher.steps if batcher is not None and batcher.steps else 1.0,
            "torch_threads": torch_threads(), "options": policy, "turns": turns}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def agreement(ref: list, got: list) -> dict[str, Any]:
    """How the assistant turns of ``got`` compare with ``ref``'s (per rollout ``[(text, logprobs)]``, same
    seeds): turns equal up to each rollout's first difference (after it the conversations part), rollouts
    equal throughout, and the largest log-prob gap over equal turns."""
    same_rollouts = same_turns = compared = 0
    max_dlogp = 0.0
    for xs, ys in zip(ref, got, strict=True):
        equal = len(xs) == len(ys)
        for (x, x_logps), (y, y_logps) in zip(xs, ys, strict=False):  # a rollout that parted may have fewer turns
            compared += 1
            if x != y:
                equal = False
                break
            same_turns += 1
            max_dlogp = max([max_dlogp, *(abs(p - q) for p, q in zip(x_logps, y_logps, strict=False))])
        same_rollouts += equal
    return {"rollouts_equal": same_rollouts, "rollouts": len(ref), "turns_equal": same_turns,
            "turns_compared": compared, "max_abs_dlogp": max_dlogp}


def policy_bench(cache: Path, work: Path, *, request: str, k: int, budget: int | None) -> dict[str, Any]:
    """Before/after on the same machine: one rollout with the prefix cache off and on, then K concurrent
    rollouts with one generate per thread (the old path, then with the cache) and batched (without and with
    the cache). Each case runs in a child process (``--case``)."""
    cases = [("1 rollout, no cache", 1, {"kv_cache_tokens": 0}),
             ("1 rollout, cache", 1, {}),
             (f"{k} rollouts, threads, no cache", k, {"batching": False, "kv_cache_tokens": 0}),
             (f"{k} rollouts, threads, cache", k, {"batching": False}),
             (f"{k} rollouts, batched, no cache", k, {"kv_cache_tokens": 0}),
             (f"{k} rollouts, batched, cache", k, {})]
    rows, trajs = [], {}
    for i, (label, n, options) in enumerate(cases):
        out = work / f"case{i}"
        out.mkdir(parents=True, exist_ok=True)
        spec = {"request": request, "k": n, "budget": budget, "policy": options, "out": str(out / "case.json")}
        print(f"[policy] {label}", flush=True)
        rc, _, rss_mb = run_child([sys.executable, __file__, "--case", json.dumps(spec)], out, cache)
        if rc != 0:
            raise RuntimeError(f"case {label!r} failed:\n{(out / 'stderr.txt').read_text()[-3000:]}")
        row = json.loads((out / "case.json").read_text(encoding="utf-8"))
        trajs[label] = row.pop("turns")
        rows.append({"case": label, **row, "max_rss_mb": rss_mb})
    compare = [("1 rollout, no cache", "1 rollout, cache"),
               (f"{k} rollouts, threads, no cache", f"{k} rollouts, threads, cache"),
               (f"{k} rollouts, threads, cache", f"{k} rollouts, batched, cache"),
               (f"{k} rollouts, threads, no cache", f"{k} rollouts, batched, no cache")]
    return {"request": request, "k": k, "max_policy_calls": budget, "cases": rows,
            "agreement": [{"ref": a, "got": b, **agreement(trajs[a], trajs[b])} for a, b in compare]}


def print_policy(d: dict[str, Any]) -> None:
    print(f"\npolicy calls: {d['request']!r}, seeds 0..K-1, max {d['max_policy_calls'] or 'default'} calls a rollout")
    print(f"{'case':32s} {'wall s':>7s} {'roll/min':>8s} {'calls':>5s} {'s/call':>7s} {'tokens':>6s} {'tok/s':>6s} "
          f"{'reused':>6s} {'batch':>5s} {'max RSS':>8s} {'load':>5s}")
    for r in d["cases"]:
        print(f"{r['case']:32s} {r['wall_s']:7.1f} {r['rollouts_per_min']:8.2f} {r['calls']:5d} "
              f"{r['policy_s_per_call']:7.2f} {r['tokens']:6d} {r['tok_s']:6.1f} {r['prompt_tokens_reused']:6.0%} "
              f"{r['mean_batch']:5.1f} {r['max_rss_mb']:8.0f} {r['load_before']:5.2f}")
    print("s/call: policy seconds per call as a rollout waits for it (queueing included); tok/s: generated tokens "
          "over wall time; reused: share of prompt tokens the prefix cache supplied; batch: mean rows per decode step; "
          "max RSS: the case's process, MB")
    for a in d["agreement"]:
        print(f"{a['got']} vs {a['ref']}: {a['rollouts_equal']}/{a['rollouts']} rollouts and "
              f"{a['turns_equal']}/{a['turns_compared']} turns say the same (to the first difference); "
              f"max |dlogp| {a['max_abs_dlogp']:.1e}")


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    from genevolve.cache import cache_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="no cold run, 2 decode contexts, 2 policy calls per CLI run")
    ap.add_argument("--cache", type=Path, help="cache for the runs (default: a fresh temp dir; with --quick your "
                                               "cache root). A cold run needs it empty")
    ap.add_argument("--request", default=REQUEST, help="request for the CLI runs")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the CLI runs")
    ap.add_argument("--max-policy-calls", type=int, help="policy budget of the CLI runs (default: the embedded "
                                                         "stack's; 2 with --quick)")
    ap.add_argument("--max-tokens", type=int, help="decode benchmark max_tokens (default 512; 96 with --quick)")
    ap.add_argument("--repeats", type=int, default=1, help="decode runs per context and mode; the fastest is kept")
    ap.add_argument("--skip-decode", action="store_true", help="no decode speed section")
    ap.add_argument("--skip-policy", action="store_true", help="no prefix cache / batching section")
    ap.add_argument("--rollouts", type=int, default=8, help="concurrent rollouts of the batching cases (K)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache and run folders")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one policy case, in a child process
    args = ap.parse_args()
    if args.case:
        spec = json.loads(args.case)
        import transformers

        transformers.logging.set_verbosity_error()
        row = rollout_case(spec["request"], spec["k"], spec["budget"], spec["policy"])
        Path(spec["out"]).write_text(json.dumps(row), encoding="utf-8")
        return

    work = Path(tempfile.mkdtemp(prefix="genevolve-speed-"))
    cache = args.cache or (cache_root() if args.quick else work / "cache")
    cache.mkdir(parents=True, exist_ok=True)
    if not args.quick and any(cache.iterdir()):
        ap.error(f"the cold run needs an empty cache, and {cache} is not empty (drop --cache or use --quick)")
    budget = args.max_policy_calls or (2 if args.quick else None)
    config = None
    if budget is not None:
        config = work / "run.yaml"
        config.write_text(f"agent: {{max_policy_calls: {budget}}}\n", encoding="utf-8")
    no_cache = work / "no-cache.yaml"  # the same stack with the policy's prefix cache off (JSON is YAML)
    no_cache.write_text(json.dumps(embedded_config(budget, kv_cache_tokens=0)), encoding="utf-8")

    rows = []
    try:
        if not args.quick:
            rows.append(cli_run("cold", args.request, work / "cold", cache, seed=args.seed, config=config))
        elif not model_converted(cache):
            prime = cli_run("prime", args.request, work / "prime", cache, seed=args.seed, config=config)
            print(f"[prime] untimed first run in {cache}: {prime['wall_s']:.1f} s")
        rows.append(cli_run("warm", args.request, work / "warm", cache, seed=args.seed, config=config))
        rows.append(cli_run("warm, no cache", args.request, work / "warm-nc", cache, seed=args.seed, config=no_cache))
        print_cli(rows)
        if len({r.get("assistant_sha") for r in rows}) > 1:
            print("note: the runs decoded different turns (same seed), so their policy times differ "
                  "in work, not only in speed")
        warm = next(r for r in rows if r["run"] == "warm")
        ok = warm["max_rss_mb"] < MEMORY_TARGET_MB
        print(f"peak memory (warm run): {warm['max_rss_mb']:.0f} MB "
              f"({'within' if ok else 'NOT within'} the {MEMORY_TARGET_MB} MB target)")
        result: dict[str, Any] = {
            "quick": args.quick, "request": args.request, "seed": args.seed, "max_policy_calls": budget,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "cli": rows, "memory": {"warm_max_rss_mb": warm["max_rss_mb"], "target_mb": MEMORY_TARGET_MB,
                                    "within_target": ok}}
        if not args.skip_decode:
            max_tokens = args.max_tokens or (96 if args.quick else 512)
            result["decode"] = decode_bench(cache, max_tokens=max_tokens, repeats=args.repeats, quick=args.quick)
            print_decode(result["decode"])
        if not args.skip_policy:
            result["policy"] = policy_bench(cache, work / "policy", request=args.request, k=args.rollouts,
                                            budget=budget)
            print_policy(result["policy"])
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
