"""The RL loop of ``genevolve evolve``: GRPO with Visual Experience Distillation (METHOD.md sections 3-4).

One step, in ``EvolveRun.step``::

    sample   K rollouts for each of the step's requests: rendered, judged, rewarded (evolve.groups)
    select   best/worst pair per group (gap >= 0.20, worst not a protocol failure, at most 8)
    extract  one experience bundle per pair, added to the memory (experience.jsonl)
    score    student views of every rollout; teacher views (guide in the system prompt) for rollouts
             whose request finds a bundle above the cosine gate; old/teacher/reference log-probs
    loss     group advantages, GRPO surrogate (+ lambda * VED, or the advantage forms)
    update   optimizer step(s), then metrics.jsonl (+ TensorBoard) and, every N steps, a checkpoint

Run folder (DESIGN.md "Runs on disk"): config.yaml, trajectories.jsonl (one Rollout a line),
images/step_NNNNNN/, experience.jsonl, metrics.jsonl, eval.jsonl and eval_trajectories.jsonl (with
``evolve.eval.every``: a fixed request set scored with fixed seeds before training and every N steps; its
rollouts carry the step they followed, -1 before training, and are not rendered to files),
tensorboard/, checkpoints/step-NNNNNN/ (NNNNNN: the last step it covers; state.pt: trainable weights,
optimizer, schedule, RNG; model/: the loadable adapter or model). ``genevolve.runfolder`` writes and reads
all of it. Resume: the newest checkpoint is loaded, every record of a later step is removed from the
jsonl files, and the loop continues with the next step. Rollout seeds depend only on (seed, step,
request, sample), so a redone step samples what the lost one would have. A resumed run whose config
differs from config.yaml (its env resolved) is refused, except in ``RESUMABLE_CHANGES``.

Several processes (``accelerate launch`` or ``torchrun`` ... ``genevolve evolve``, given as
``accelerator``): the main process samples, selects, extracts, keeps the memory and writes every file;
each step it sends the rows (trajectory, advantage, teacher system prompt) to all processes, which build
their token views and train data-parallel (``Learner`` splits the rows and sums the gradients), so every
replica holds the same weights after each update. Learner metrics are summed over processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.display import Progress
from genevolve.evolve.groups import Task
from genevolve.evolve.parallel import process_model_spec
from genevolve.evolve.rl_config import EvolveFile
from genevolve.evolve.rollout import Rollout
from genevolve.registry import ConfigError
from genevolve.runfolder import (
    CONFIG,
    JsonlLog,
    check_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_config,
)

#: the step-tagged logs, cut back to the checkpoint's step on resume
LOGS = ("trajectories.jsonl", "metrics.jsonl", "eval.jsonl", "eval_trajectories.jsonl")
#: config keys a resumed run may change: where the run lives, what it keeps and where its servers are, not what
#: it computes. Refused, among others: ``steps`` (the cosine schedule spans it), ``concurrency`` and
#: ``sample_threads`` (batched sampling numerics), ``eval`` (without eval.data it holds requests out of training).
RESUMABLE_CHANGES = (
    "evolve.out", "evolve.save_every", "evolve.keep_checkpoints", "evolve.tensorboard", "evolve.rollout.pool",
    *(f"evolve.rollout.lora_sync.{key}" for key in ("servers", "api_key_env", "path_map", "timeout", "max_retries",
                                                    "backoff_base", "backoff_max", "verify_probes")),
    "env.policy.base_url", "env.policy.api_key_env")
#: every evaluation samples with the rollout seeds of this pseudo-step (training steps stay far below it)
EVAL_SEED_STEP = 1_000_000


# -- the run ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[phase]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t


class _MainFailed:
    """Sent instead of a step's rows when the main process fails, so that the others stop too."""


@dataclass
class StepResult:
    step: int
    metrics: dict[str, Any]
    rollouts: list[Rollout]


class EvolveRun:
    """Builds every piece from an ``EvolveFile`` and runs steps. ``config_dir`` resolves a relative env path."""

    def __init__(self, cfg: EvolveFile, *, config_dir: Path | None = None, progress: bool = True,
                 accelerator: Any = None) -> None:
        from genevolve.bench.datasets import load_dataset
        from genevolve.evolve.extractors import EXTRACTORS
        from genevolve.evolve.learner import Learner
        from genevolve.evolve.memory import ExperienceMemory, sentence_embedder
        from genevolve.evolve.model import load_model
        from genevolve.evolve.tokens import ChatEncoder
        from genevolve.registry import build

        self.cfg, self.ev = cfg, cfg.evolve
        self.out = Path(self.ev.out)
        self.accelerator = accelerator
        self.is_main = accelerator is None or accelerator.is_main_process
        self.progress = progress and self.is_main  # one progress display, the main process's
        self.display = Progress(self.progress)
        env = cfg.run_config(config_dir)
        items = load_dataset(self.ev.data).items
        self.tasks = [Task(i.id, i.request, i.gt_image, dict(i.meta)) for i in items if i.gt_image]
        self.eval_tasks = self._eval_tasks()
        model_spec = cfg.model_spec()
        self._check(env, model_spec)  # configuration mistakes surface before the model loads
        self.snapshot = config_snapshot(cfg, config_dir)
        self._check_resumable(config_dir)
        self.logs = {name: JsonlLog(self.out / name) for name in LOGS}
        self.tm = load_model(process_model_spec(model_spec, accelerator))
        # the learner's token views show each turn the images the rollout policy was shown
        self.encoder = ChatEncoder(self.tm.tokenizer, self.tm.processor, skip_forced=self.ev.mask_forced,
                                   accepts_images=self._policy_sees_images(env),
                                   max_context_images=env.agent.max_context_images)
        self.learner = Learner(self.tm, self.ev, accelerator=accelerator)
        self._writer: Any = None
        self.pool: Any = None
        self.lora_sync: Any = None
        if not self.is_main:
            return  # the other processes only train: the main one samples, remembers and writes
        self.agent = self._agent(env)  # the learner-side agent: its system prompt is the teacher's base
        spec = self._env_spec(env)
        if self.ev.rollout.backend == "server":
            self._server_rollouts(spec)
        else:
            from genevolve.evolve.workers import build_sampler

            self.sampler = build_sampler(spec, agent=self.agent)
        ex = self.ev.experience
        self.extractor = build(EXTRACTORS, ex.extractor.kind, "extractor", **ex.extractor.options)
        self.memory = ExperienceMemory(
            self.out / "experience.jsonl", capacity=ex.capacity, threshold=ex.threshold, policy=ex.visibility,
            embed=sentence_embedder(ex.embedder))

    def _check(self, env: Any, model: Any) -> None:
        """What the config's types cannot say alone: enough requests, a server to roll out on, a LoRA to sync."""
        if len(self.tasks) < self.ev.requests_per_step:
            raise ConfigError(f"{self.ev.data}: {len(self.tasks)} requests with a GT image; a step needs "
                              f"{self.ev.requests_per_step} (evolve.requests_per_step)")
        if self.ev.rollout.backend == "server" and (env.policy is None or env.policy.kind != "openai"):
            raise ConfigError("rollout.backend 'server' needs env.policy of kind 'openai' pointed at the inference "
                              "server (vLLM or SGLang)")
        if model.autocast is not None:
            raise ConfigError("model.autocast is for SFT: RL compares the learner's log-probs with the sampler's, and "
                              "bfloat16 rounding (~1e-2 nats) would swamp that check; remove it from the evolve config")
        if self.ev.rollout.lora_sync is not None and model.lora is None and model.adapter is None:
            raise ConfigError("rollout.lora_sync publishes a LoRA adapter: set model.lora (or evolve.init_from "
                              "an SFT adapter)")

    def _check_resumable(self, config_dir: Path | None) -> None:
        """Refuse to resume this folder's run under a config that would change its results."""
        if latest_checkpoint(self.out) is None and not (self.out / "eval.jsonl").is_file():
            return  # nothing to resume: the run starts over
        check_config(self.out / CONFIG, self.snapshot, command="evolve", resumable=RESUMABLE_CHANGES,
                     normalise=lambda saved: config_snapshot(EvolveFile.model_validate(saved), config_dir),
                     hint=f"remove {self.out}, or choose another --out")

    def _eval_tasks(self) -> list[Task]:
        """The evaluation requests: from ``eval.data``, or a seeded choice held out of the training requests."""
        from genevolve.bench.datasets import load_dataset

        ev = self.ev.eval
        if not ev.every:
            return []
        if ev.data is not None:
            tasks = [Task(i.id, i.request, i.gt_image, dict(i.meta)) for i in load_dataset(ev.data).items if i.gt_image]
            if not tasks:
                raise ConfigError(f"evolve.eval.data {ev.data}: no row has a GT image")
            return tasks[: ev.requests]
        if len(self.tasks) <= ev.requests:
            raise ConfigError(f"{self.ev.data}: {len(self.tasks)} requests cannot spare {ev.requests} for evaluation "
                              "(evolve.eval.requests)")
        held = set(random.Random(f"{self.ev.seed}|eval").sample(range(len(self.tasks)), ev.requests))
        chosen = [t for i, t in enumerate(self.tasks) if i in held]
        self.tasks = [t for i, t in enumerate(self.tasks) if i not in held]
        return chosen

    def evaluate(self, step: int) -> dict[str, Any]:
        """Score the evaluation requests with the current policy (after ``step``; -1: before training),
        append the record to ``eval.jsonl`` and return it. The same seeds every time."""
        from dataclasses import replace

        t = time.perf_counter()
        self.tm.model.eval()
        sampler = replace(self.sampler, k=self.ev.eval.k, images_dir=None)
        groups = asyncio.run(sampler.sample(self.eval_tasks, step=EVAL_SEED_STEP))
        rollouts = [r.model_copy(update={"step": step}) for g in groups for r in g]
        record = {"step": step, **_reward_metrics(rollouts), "seconds": round(time.perf_counter() - t, 3)}
        for rollout in rollouts:
            self.logs["eval_trajectories.jsonl"].append(rollout.to_json())
        self.logs["eval.jsonl"].append(record)
        # TensorBoard's x for eval/*: updates made (0 before training), as its steps cannot be negative.
        self._tensorboard({"step": step + 1, "eval": {k: v for k, v in record.items() if k != "step"}})
        self.display.line(f"eval after step {step:>4}  reward {record['reward']:.3f} (max {record['reward_max']:.2f})  "
                          f"{record['rollouts']} rollouts  {record['seconds']:.0f}s")
        return record

    def _agent(self, env: Any) -> Any:
        from genevolve.agent import Agent
        from genevolve.policy.hf import HFPolicy
        from genevolve.tools import build_tools

        agent_cfg = env.agent.model_copy(deep=True)
        sampling = agent_cfg.sampling.model_copy(update={
            "temperature": self.ev.temperature, "top_p": self.ev.top_p,
            **({"max_tokens": self.ev.max_new_tokens} if self.ev.max_new_tokens else {})})
        agent_cfg.sampling = sampling
        policy = HFPolicy.from_objects(
            self.tm.model, self.tm.tokenizer, self.tm.processor, name="hf:learner",
            structured=bool(agent_cfg.structured_decoding), think_max_chars=self.ev.think_max_chars,
            prompt_max_chars=self.ev.prompt_max_chars, max_concurrency=self.ev.concurrency,
            torch_threads=self.ev.sample_threads)
        tools = build_tools(search=env.search, image_search=env.image_search, knowledge=env.knowledge,
                            download=env.download)
        return Agent(policy, tools, agent_cfg)

    def _policy_sees_images(self, env: Any) -> bool:
        """Whether rollouts show the policy its retrieved images: a VLM learner's always do (METHOD.md §1); a
        server policy that would not send them to a VLM is a configuration mistake, not a text-only run."""
        vlm = self.tm.processor is not None and getattr(self.tm.processor, "image_processor", None) is not None
        if self.ev.rollout.backend == "server" and env.policy is not None:
            sends = bool(env.policy.options.get("accepts_images", False))
            if vlm and not sends:
                raise ConfigError("the policy model is a VLM but env.policy does not send it images: set "
                                  "env.policy.accepts_images: true (the rollouts must show what the learner scores)")
            if sends and not vlm:
                raise ConfigError("env.policy.accepts_images is true but the policy model has no image processor")
        return vlm

    def _env_spec(self, env: Any) -> Any:
        """The rollout environment with the RL sampling settings (what every rollout backend builds from)."""
        from genevolve.evolve.workers import EnvSpec

        return EnvSpec.from_run_config(
            env.model_copy(update={"agent": self.agent.config}), program_judge=self.ev.program_judge,
            k=self.ev.k, alpha=self.ev.alpha, concurrency=self.ev.concurrency,
            images_dir=str(self.out / "images"), base_seed=self.ev.seed)

    def _server_rollouts(self, spec: Any) -> None:
        from genevolve.evolve.lora_sync import LoraSync
        from genevolve.evolve.workers import RolloutPool

        self.pool = RolloutPool(spec, self.ev.rollout.pool)  # _check vetted the policy and the LoRA
        if self.ev.rollout.lora_sync is not None:
            self.lora_sync = LoraSync(self.ev.rollout.lora_sync)

    def _publish(self, step: int) -> None:
        """Serve the current adapter for the rollouts of ``step`` (server rollouts with lora_sync only)."""
        if self.lora_sync is None:
            return
        from genevolve.evolve.lora_sync import save_adapter

        folder = save_adapter(self.tm.model, self.out / "adapters", step=step)
        self.pool.set_model(self.lora_sync.publish(folder, step=step))

    def _sample(self, step: int) -> list[list[Rollout]]:
        if self.pool is not None:
            return self.pool.sample(self.tasks_for(step), step=step)
        self.tm.model.eval()
        return asyncio.run(self.sampler.sample(self.tasks_for(step), step=step))

    # -- steps -------------------------------------------------------------------------------------------

    def tasks_for(self, step: int) -> list[Task]:
        """The step's requests: passes over the shuffled data (a fresh seeded order per pass)."""
        n, per = len(self.tasks), self.ev.requests_per_step
        out: list[Task] = []
        start = step * per
        for position in range(start, start + per):
            epoch, offset = divmod(position, n)
            order = list(range(n))
            random.Random(f"{self.ev.seed}|epoch|{epoch}").shuffle(order)
            out.append(self.tasks[order[offset]])
        return out

    def step(self, step: int) -> StepResult | None:
        """One step, in the order of its phases (their names are the keys of ``metrics["seconds"]``):

        sample → select → extract (the main process) → views → old / teacher / reference log-probs →
        update (every process, on its share of the rows). With several processes the main one returns
        the record; the others return None."""
        seconds: dict[str, float] = {}
        plan = self._on_main(step, lambda: self._plan(step, seconds))
        with _timed(seconds, "views"):
            rows, info = self._rows(plan["specs"])
        learned = self.learner.step(rows) if rows else {"seconds": {}}  # score, loss, update
        seconds.update(learned.pop("seconds"))
        if not self.is_main:
            return None
        metrics = {"step": step, **_reward_metrics(plan["rollouts"]), **plan["metrics"], **info,
                   "bundle_cosines": plan["cosines"], **learned,
                   "seconds": {k: round(v, 3) for k, v in seconds.items()}, "peak_rss_mb": _peak_rss_mb(),
                   "processes": self.learner.world}
        return StepResult(step, metrics, plan["rollouts"])

    def _plan(self, step: int, seconds: dict[str, float]) -> dict[str, Any]:
        """The main process's share of a step: sample, select, extract; the rows to train on."""
        from genevolve.evolve.experience import select_pairs

        with _timed(seconds, "sample"):
            groups = self._sample(step)
        with _timed(seconds, "select"):
            selection = select_pairs(groups, min_gap=self.ev.experience.min_gap,
                                     max_pairs=self.ev.experience.max_pairs)
        with _timed(seconds, "extract"):
            bundles = asyncio.run(self._extract(selection.pairs, step))
            for bundle in bundles:
                self.memory.add(bundle)
        matches = self.memory.lookup_many([g[0].request for g in groups], step=step)
        return {"rollouts": [r for g in groups for r in g], "specs": self._specs(groups, matches),
                "cosines": [round(m.cosine, 3) for m in matches if m is not None],
                "metrics": {"pairs": len(selection.pairs), "pairs_skipped": selection.skipped,
                            "bundles_added": len(bundles), "memory": self.memory.stats()}}

    def _specs(self, groups: list[list[Rollout]], matches: list[Any]) -> list[tuple[Any, float, str | None]]:
        """Per rollout: (trajectory, group advantage, teacher system prompt or None when no bundle matched)."""
        import torch

        from genevolve.evolve.losses import group_advantages

        specs = []
        for group, match in zip(groups, matches, strict=True):
            advantages = group_advantages(torch.tensor([r.reward.value for r in group]), scale=self.ev.advantage_scale)
            guide = None if match is None else self.agent.system_prompt_with(match.bundle.to_guide())
            specs += [(r.trajectory, adv, guide) for r, adv in zip(group, advantages.tolist(), strict=True)]
        return specs

    def _on_main(self, step: int, plan: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``plan()`` on the main process; its rows reach every process (the others get ``{"specs": ...}``).
        When the main process fails, the others are told, so they stop instead of waiting out the timeout."""
        if not self.is_main:
            specs = self._share(None)
            if isinstance(specs, _MainFailed):
                raise RuntimeError(f"step {step}: the main process failed while sampling; its error says why")
            return {"specs": specs}
        try:
            result = plan()
        except BaseException:
            self._share(_MainFailed())
            raise
        self._share(result["specs"])
        return result

    def _share(self, value: Any) -> Any:
        """The main process's ``value`` on every process (itself without several)."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    async def _extract(self, pairs: list[Any], step: int) -> list[Any]:
        from genevolve.evolve.extractors import ExtractionError

        bundles = []
        for pair in pairs:
            try:
                bundles.append(await self.extractor.aextract(pair.best, pair.worst, step=step))
            except ExtractionError as exc:  # one lost lesson, not a lost step
                self.display.line(f"step {step}: extraction failed for {pair.best.request_id}: {exc}")
        return bundles

    def _rows(self, specs: list[tuple[Any, float, str | None]]) -> tuple[list[Any], dict[str, Any]]:
        """Token views of the rows (every process builds its own from the shared trajectories)."""
        from genevolve.evolve.learner import Row
        from genevolve.evolve.tokens import TokenViewError

        rows, skipped = [], 0
        for trajectory, adv, guide in specs:
            try:
                views = self.encoder.views(trajectory)
                teachers = [None] * len(views) if guide is None else self.encoder.views(trajectory, system=guide)
            except TokenViewError:
                skipped += 1  # e.g. a policy error before the first assistant turn
                continue
            # a trajectory whose contexts part (images dropped) is several sequences: one rollout between them
            rows += [Row(v, t, adv, weight=1 / len(views)) for v, t in zip(views, teachers, strict=True)]
        with_bundle = sum(1 for r in rows if r.teacher is not None)
        forced = sum(r.view.n_forced for r in rows)
        generated = forced + sum(r.view.n_assistant_tokens for r in rows)
        info = {"rows": len(rows), "rows_skipped": skipped, "bundle_fraction": with_bundle / len(rows) if rows else 0.0,
                "forced_fraction": forced / generated if generated else 0.0}
        return rows, info

    # -- the whole run -------------------------------------------------------------------------------

    def run(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Run (or resume) up to ``steps`` steps (default: the config's); returns this call's metrics."""
        if self.is_main:
            save_config(self.out, self.snapshot)
        start = self.resume()
        total = steps if steps is not None else self.ev.steps
        evaluating = bool(self.eval_tasks) and self.is_main
        if evaluating and start == 0 and all(r["step"] != -1 for r in self.logs["eval.jsonl"].read()):
            self.evaluate(-1)
        if start < total:
            self._publish(start)
        done: list[dict[str, Any]] = []
        for step in range(start, total):
            result = self.step(step)
            if result is None:  # not the main process: it has nothing to write
                if self.learner.sharded and ((step + 1) % self.ev.save_every == 0 or step + 1 == total):
                    self.save(step)  # FSDP: gathering the weights for the checkpoint takes every process
                continue
            for rollout in result.rollouts:
                self.logs["trajectories.jsonl"].append(rollout.to_json())
            self.logs["metrics.jsonl"].append(result.metrics)
            self._tensorboard(result.metrics)
            done.append(result.metrics)
            self.display.line(_one_line(result.metrics))
            if evaluating and ((step + 1) % self.ev.eval.every == 0 or step + 1 == total):
                self.evaluate(step)
            if (step + 1) % self.ev.save_every == 0 or step + 1 == total:
                self.save(step)
            if step + 1 < total:
                self._publish(step + 1)
        return done

    def resume(self) -> int:
        """Load the newest checkpoint (if any), drop later records; the next step to run."""
        last = self._share(latest_checkpoint(self.out) if self.is_main else None)
        last_step = -1
        if last is not None:
            state = load_checkpoint(last)
            self.learner.load_state_dict(state["learner"])
            last_step = int(state["step"])
        if not self.is_main:
            return last_step + 1
        for log in self.logs.values():
            log.keep_steps(last_step)
        self.memory.discard_after(last_step)
        for stale in sorted((self.out / "images").glob("step_*")) if (self.out / "images").is_dir() else []:
            if int(stale.name.split("_")[1]) > last_step:
                shutil.rmtree(stale)
        return last_step + 1

    def save(self, step: int) -> Path:
        """A checkpoint of ``step`` (main process only: every process holds the same weights and optimizer
        state). With FSDP every process calls it to gather the shards, and only the main process writes."""
        from genevolve.evolve.model import save_model

        return save_checkpoint(self.out, step, {"learner": self.learner.state_dict()}, keep=self.ev.keep_checkpoints,
                               write_model=lambda folder: save_model(self.tm, folder), main=self.is_main)

    def _tensorboard(self, metrics: dict[str, Any]) -> None:
        if not self.ev.tensorboard:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: metrics.jsonl has everything
                self.ev.tensorboard = False
                return
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        for key, value in _flat(metrics).items():
            if isinstance(value, int | float) and key != "step":
                self._writer.add_scalar(key, value, metrics["step"])
        self._writer.flush()


def config_snapshot(cfg: EvolveFile, config_dir: Path | None = None) -> dict[str, Any]:
    """What config.yaml holds: the config with its env resolved, so that a changed env file is a changed config."""
    return {**cfg.model_dump(mode="json"), "env": cfg.run_config(config_dir).model_dump(mode="json")}


# -- builders and metrics -----------------------------------------------------------------------------


def _reward_metrics(rollouts: list[Rollout]) -> dict[str, Any]:
    from statistics import fmean, pstdev

    from genevolve.reward import count_failures

    values = [r.reward.value for r in rollouts]
    scores = [r.image_score for r in rollouts if r.image_score is not None]
    dims: dict[str, float | None] = {}
    for dim in ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics", "overall"):
        xs = [getattr(s, dim) for s in scores if getattr(s, dim) is not None]
        dims[dim] = fmean(xs) if xs else None
    programs = [r.program_score for r in rollouts if r.program_score is not None]
    return {"reward": fmean(values) if values else 0.0, "reward_std": pstdev(values) if len(values) > 1 else 0.0,
            "reward_max": max(values, default=0.0), "rubric": dims,
            "program_score": fmean(programs) if programs else None, "rollouts": len(rollouts),
            "failures": count_failures(r.reward for r in rollouts),
            # behaviour: what RL can change without understanding a request (shorter, complete programs)
            "policy_calls": fmean(r.trajectory.n_policy_calls for r in rollouts) if rollouts else 0.0,
            "tool_calls": fmean(r.trajectory.n_tool_calls for r in rollouts) if rollouts else 0.0}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_line(m: dict[str, Any]) -> str:
    s = m.get("seconds", {})
    return (f"step {m['step']:>4}  reward {m['reward']:.3f} (max {m['reward_max']:.2f})  pairs {m['pairs']}  "
            f"bundles {m.get('bundle_fraction', 0):.0%}  grpo {m.get('grpo_loss', 0):+.4f}  "
            f"ved {m.get('ved_loss', 0):.4f}  sample {s.get('sample', 0):.0f}s  update {s.get('update', 0):.1f}s")
