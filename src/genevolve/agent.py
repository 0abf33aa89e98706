"""The GenEvolve ReAct loop: request in, Trajectory (with a validated Program or a named failure) out.

One rollout is at most ``max_policy_calls`` policy calls and ``max_tool_calls`` tool calls. The last
allowed call is preceded by a final-step message that forbids tools. Model-caused problems (format
errors, bad arguments, repeated calls, invalid answers) become observations and the loop goes on;
tool failures (timeouts, HTTP errors) become observations too. Every rollout ends with one StopReason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genevolve import prompts
from genevolve.policy.base import Constraint, Policy, PolicyError, Sampling
from genevolve.policy.messages import visible_images
from genevolve.protocol import ParsedTurn, format_tool_response, parse_turn
from genevolve.tools.base import Tool, ToolError
from genevolve.types import (
    IMAGE_PLACEHOLDER,
    Observation,
    RetrievedImage,
    StopReason,
    ToolCallRecord,
    Trajectory,
    Turn,
)
from genevolve.validation import validate_answer


class AgentConfig(BaseModel):
    """Budgets and rules of one rollout. Defaults are the paper's (METHOD.md section 1)."""

    model_config = ConfigDict(extra="forbid")

    max_policy_calls: int = Field(11, ge=1, description="policy calls per rollout, final step included")
    max_tool_calls: int = Field(10, ge=0, description="tool calls per rollout; after the last, only an answer")
    max_references: int = Field(2, ge=1, description="references kept in the program (released rule: 1-2)")
    min_references: int = Field(1, ge=0, description="fewer usable references than this is a protocol failure")
    tool_timeout_s: float = Field(90.0, gt=0, description="wall-clock limit for one tool call")
    max_context_images: int = Field(12, ge=0, description="images attached to a VLM policy's context, newest kept")
    structured_decoding: bool | None = Field(
        None, description="decode every turn under the protocol grammar; None: when the policy prefers it "
                          "(the embedded policy does; for a vLLM server set true)")
    grounded_queries: bool = Field(
        False, description="with structured decoding: every word of an image_search query must appear in the "
                           "request or a tool response so far (an aid for small policies that cannot yet copy "
                           "names reliably: they choose and combine words instead of inventing them)")
    sampling: Sampling = Field(default_factory=Sampling)
    prompt: Literal["full", "compact"] | None = Field(
        None, description="system prompt style: full (tool schemas, skill guidance, answer rules) or compact "
                          "(~250 tokens, for small policies trained with it; see genevolve.prompts.system_prompt); "
                          "None: the policy's `prompt_style` (the embedded policy with its bundled adapter: "
                          "compact), else full")


#: Builds the structured-decoding constraint for the next call from the rollout state (or None).
ConstraintFactory = Callable[["RolloutState"], Constraint | None]


@dataclass
class RolloutState:
    """What the loop knows mid-rollout; handed to constraint factories."""

    request: str = ""
    round: int = 0
    final: bool = False
    n_tool_calls: int = 0
    images: dict[str, RetrievedImage] = field(default_factory=dict)
    next_image_number: int = 1
    calls_seen: dict[str, int] = field(default_factory=dict)  # canonical call -> round first made
    last_repeated_tool: str | None = None  # the tool of the previous call, if that call was a repeat
    observations: list[str] = field(default_factory=list)  # tool-response texts shown so far, in order

    def register(self, image: RetrievedImage) -> RetrievedImage:
        """Give a retrieved image the next ``IMG_###`` id; the same file or URL keeps its first id."""
        key = image.path or image.url
        for known in self.images.values():
            if key and (known.path or known.url) == key:
                return known
        img_id = f"IMG_{self.next_image_number:03d}"
        self.next_image_number += 1
        registered = image.model_copy(update={"img_id": img_id})
        self.images[img_id] = registered
        return registered


def format_image_lines(query: str, header: str, images: Sequence[RetrievedImage], *, with_images: bool) -> str:
    """The text the policy sees for image results. With ``with_images`` each usable line carries an
    ``<image>`` placeholder where the picture is attached (VLM policies)."""
    lines = [header or f"Image results for {query!r}:"]
    for image in images:
        page = image.page_url or image.url or ""
        # a web page says where the picture comes from; a local path or library key only costs tokens
        # (about a third of an embedded rollout's image results) and leaks the user's folders into data
        source = f" (source: {page})" if page.startswith(("http://", "https://")) else ""
        if image.path is None:
            lines.append(f"{image.img_id}: {image.title}{source} [unusable: {image.error or 'not downloaded'}]")
        else:
            lines.append(f"{image.img_id}: {image.title}{source}" + (f" {IMAGE_PLACEHOLDER}" if with_images else ""))
    if not images:
        lines.append("No images found. Try a shorter or different query.")
    return "\n".join(lines)


def _canonical(name: str, args: dict[str, Any]) -> str:
    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return " ".join(v.lower().split())
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in sorted(v.items())}
        return v

    return json.dumps([name, norm(args)], sort_keys=True, ensure_ascii=False)


def agent_system_prompt(tools: Sequence[Tool], config: AgentConfig, guide: str | None = None,
                        policy: Any = None) -> str:
    """The system prompt an agent with these tools and budgets shows ``policy`` (SFT re-renders rows with it)."""
    return prompts.system_prompt(
        list(tools), max_policy_calls=config.max_policy_calls, max_tool_calls=config.max_tool_calls,
        min_references=config.min_references, max_references=config.max_references, guide=guide,
        style=config.prompt or getattr(policy, "prompt_style", None) or "full")


class Agent:
    """Runs rollouts of ``policy`` with ``tools``.

    >>> agent = Agent(policy, [search_tool, image_tool, knowledge_tool])
    >>> traj = agent.run("A poster of the 2024 Olympic mascot")
    >>> traj.program.gen_prompt
    """

    def __init__(
        self,
        policy: Policy,
        tools: Iterable[Tool],
        config: AgentConfig | None = None,
        *,
        constraint_factory: ConstraintFactory | None = None,
        guide: str | None = None,
    ):
        self.policy = policy
        self.tools = {t.name: t for t in tools}
        self.config = config or AgentConfig()
        use_grammar = self.config.structured_decoding
        if use_grammar is None:
            use_grammar = getattr(policy, "prefers_structured", False)
        if constraint_factory is None and use_grammar:
            from genevolve.structured import constraint_factory as protocol_constraints

            # a policy may bound the grammar's free text (a small model trained with shorter thoughts and prompts)
            extra = {key: getattr(policy, key) for key in ("think_max_chars", "prompt_max_chars")
                     if hasattr(policy, key)}
            constraint_factory = protocol_constraints(
                list(self.tools.values()), min_references=self.config.min_references,
                max_references=self.config.max_references, max_tool_calls=self.config.max_tool_calls,
                grounded_queries=self.config.grounded_queries, **extra)
        self.constraint_factory = constraint_factory
        self.system_prompt = self.system_prompt_with(guide)

    # -- public API -------------------------------------------------------------------------------

    def system_prompt_with(self, guide: str | None) -> str:
        """This agent's system prompt with a decision-guide block (the VED teacher's context)."""
        return agent_system_prompt(list(self.tools.values()), self.config, guide, self.policy)

    def run(self, request: str, **kw: Any) -> Trajectory:
        return asyncio.run(self.arun(request, **kw))

    async def arun_many(self, requests: Sequence[str], *, concurrency: int = 4) -> list[Trajectory]:
        sem = asyncio.Semaphore(concurrency)

        async def one(r: str) -> Trajectory:
            async with sem:
                return await self.arun(r)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def arun(self, request: str, *, id: str | None = None, meta: dict[str, Any] | None = None,
                   seed: int | None = None) -> Trajectory:
        """One rollout. ``seed`` (when given) replaces the sampling seed: call ``r`` of the rollout samples
        with ``seed * 1000 + r``, so the K rollouts of a training group differ and each is reproducible."""
        t0 = time.perf_counter()
        traj = Trajectory(request=request, meta=meta or {}, backends=self._backend_names())
        if id:
            traj.id = id
        traj.turns = [Turn(role="system", content=self.system_prompt),
                      Turn(role="user", content=request, kind="request")]
        traj.timings = {"policy": 0.0, "tools": 0.0}
        if not request.strip():
            self._stop(traj, StopReason.EMPTY_REQUEST, "the request is empty")
        else:
            await self._loop(traj, RolloutState(request=request), seed)
        traj.timings["total"] = time.perf_counter() - t0
        return traj

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self, traj: Trajectory, state: RolloutState, seed: int | None = None) -> None:
        cfg = self.config
        for round_ in range(1, cfg.max_policy_calls + 1):
            state.round = round_
            last = round_ == cfg.max_policy_calls
            if (last or state.n_tool_calls >= cfg.max_tool_calls) and not state.final:
                state.final = True
                traj.turns.append(Turn(role="user", content=prompts.final_step_message(), kind="final_step"))

            t = time.perf_counter()
            try:
                constraint = self.constraint_factory(state) if self.constraint_factory else None
                sampling = cfg.sampling if seed is None else cfg.sampling.model_copy(update={"seed": seed * 1000 + round_})
                reply = await self.policy.areply(self._context(traj.turns), sampling=sampling, constraint=constraint)
            except PolicyError as exc:
                traj.timings["policy"] += time.perf_counter() - t
                self._stop(traj, StopReason.POLICY_ERROR, f"policy {self.policy.name}: {exc}")
                return
            traj.timings["policy"] += time.perf_counter() - t
            traj.n_policy_calls += 1
            traj.turns.append(Turn(role="assistant", content=reply.text, forced=reply.forced,
                                   forced_end=reply.forced_end, token_ids=reply.token_ids,
                                   logprobs=reply.logprobs, stop_token_id=reply.stop_token_id,
                                   truncated=reply.truncated))

            parsed = parse_turn(reply.text, self.tools.keys())
            if parsed.error:
                traj.n_format_errors += 1
                self._observe(traj, prompts.format_error_message(parsed.error.code, parsed.error.message), "format_error")
            elif parsed.tool_call:
                if state.final:
                    traj.n_format_errors += 1
                    self._observe(traj, prompts.format_error_message(
                        "tool_call_in_final_step", "Tools are no longer available; answer now."), "format_error")
                else:
                    await self._run_tool(traj, state, parsed)
            elif self._accept_answer(traj, state, parsed, last):
                return
        if traj.stop_reason != StopReason.INVALID_ANSWER:
            self._stop(traj, StopReason.NO_ANSWER, f"no valid answer within {cfg.max_policy_calls} policy calls")

    def _accept_answer(self, traj: Trajectory, state: RolloutState, parsed: ParsedTurn, last: bool) -> bool:
        result = validate_answer(parsed.answer or {}, state.images, max_references=self.config.max_references,
                                 min_references=self.config.min_references)
        traj.violations.extend(result.names)
        traj.retrieved = list(state.images.values())
        if result.program is not None:
            traj.program = result.program
            traj.stop_reason, traj.failure = StopReason.ANSWER, None
            return True
        traj.stop_reason, traj.failure = StopReason.INVALID_ANSWER, result.describe()
        if not last:
            self._observe(traj, prompts.answer_rejected_message(result.describe()), "answer_rejected")
        return False

    async def _run_tool(self, traj: Trajectory, state: RolloutState, parsed: ParsedTurn) -> None:
        call = parsed.tool_call
        assert call is not None
        tool = self.tools[call.name]
        state.n_tool_calls += 1
        traj.n_tool_calls += 1
        record = ToolCallRecord(round=state.round, name=call.name, arguments=call.arguments)
        traj.tool_calls.append(record)

        key = _canonical(call.name, call.arguments)
        state.last_repeated_tool = call.name if key in state.calls_seen else None
        if key in state.calls_seen:
            record.repeated = True
            record.error = "repeated_call"
            self._observe(traj, f"You already made this exact call in round {state.calls_seen[key]}; its result "
                                "is above. Use it, or make a different call.")
            return
        state.calls_seen[key] = state.round

        t = time.perf_counter()
        try:
            args = tool.Args.model_validate(call.arguments)
            obs = await asyncio.wait_for(tool.acall(args), self.config.tool_timeout_s)
        except ValidationError as exc:
            obs = Observation(text=f"[tool error: bad_arguments] {call.name}: {_brief(exc)}", error="bad_arguments")
        except TimeoutError:
            obs = Observation(text=f"[tool error: timeout] {call.name} took longer than "
                                   f"{self.config.tool_timeout_s:.0f} s", error="timeout")
        except ToolError as exc:
            obs = Observation(text=f"[tool error: {exc.code}] {call.name}: {exc.message}", error=exc.code)
        record.seconds = time.perf_counter() - t
        traj.timings["tools"] += record.seconds
        record.error = obs.error

        if obs.images:
            registered = [state.register(im) for im in obs.images]
            record.n_images = len(registered)
            attach = self.policy.accepts_images
            text = format_image_lines(getattr(args, "query", ""), obs.text, registered, with_images=attach)
            paths = [im.path for im in registered if im.path is not None] if attach else []
            self._observe(traj, text, images=paths)
        else:
            text = obs.text
            self._observe(traj, text)
        state.observations.append(text)
        traj.retrieved = list(state.images.values())

    # -- helpers ----------------------------------------------------------------------------------

    def _observe(self, traj: Trajectory, text: str, kind: str = "tool_response", images: list[str] | None = None) -> None:
        traj.turns.append(Turn(role="user", content=format_tool_response(text), images=images or [], kind=kind))

    def _context(self, turns: list[Turn]) -> list[Turn]:
        """What the policy sees: all turns, with only the newest ``max_context_images`` images attached
        (older ones stay as their text lines) so a VLM's context stays bounded."""
        return visible_images(turns, self.config.max_context_images)

    def _backend_names(self) -> dict[str, str]:
        names = {"policy": self.policy.name}
        for name, tool in self.tools.items():
            names[name] = tool.backend or type(tool).__name__
        return names

    @staticmethod
    def _stop(traj: Trajectory, reason: StopReason, failure: str | None) -> None:
        traj.stop_reason = reason
        traj.failure = failure
        traj.program = None


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()[:3])
