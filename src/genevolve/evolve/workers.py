"""Rollout workers: a step's tasks split over N group samplers, in-process or as Ray actors.

``RolloutPool(spec, PoolConfig(...)).asample(tasks, step=s)`` returns the same ``list[list[Rollout]]``
as ``GroupSampler.sample`` (one group per task, task order), whichever backend runs it:

- ``local`` (default): the workers are in-process ``GroupSampler``s sharing the event loop; use it on
  one machine, where asyncio concurrency already overlaps policy calls, renders and judges.
- ``ray``: each worker is a Ray actor (``ray.init(address=...)`` when ``ray_address`` is set, else a
  local Ray started here) holding its own sampler, so renderers and judges can sit on other machines.
  ``pip install 'genevolve[ray]'``.

Each worker builds its sampler from an ``EnvSpec``: plain, picklable data (the ``RunConfig`` roles
plus the program judge, K, alpha, concurrency, images folder, seed), never live objects. A worker gets
a contiguous share of the step's tasks together with their step-wide indices, so seeds, group ids and
image names are exactly those of a single sampler, and the result does not depend on N.

What travels between processes: tasks as dicts, rollouts as JSON (``Rollout.to_json``). Images never
travel: the GT images the tasks name, and the rendered images the workers write under
``images_dir``, are paths that must be readable by the trainer and every worker: on a cluster, put
the task data and the run folder on a shared filesystem (NFS, a mounted bucket) at the same path.

Failures: a worker that raises, or an actor that dies, loses only its own share. The share is run once
more on another live worker (a dead actor is replaced by a fresh one with the current model name);
if that fails too, ``RolloutWorkerError`` names the tasks and carries every finished group. An actor
that dies while switching models (``aset_model``) is replaced the same way, on the new model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genevolve.config import BackendSpec, RunConfig
from genevolve.evolve.groups import GroupSampler, Task
from genevolve.evolve.rollout import Rollout
from genevolve.registry import ConfigError

Groups = list[list[Rollout]]
log = logging.getLogger(__name__)


class EnvSpec(RunConfig):
    """The rollout environment as data: the ``RunConfig`` roles (policy, tools, renderer, judge, agent)
    plus what the group sampler needs. Built into a ``GroupSampler`` by :func:`build_sampler`."""

    program_judge: BackendSpec | None = Field(None, description="program-sufficiency judge; required when alpha > 0")
    # evolve.k, evolve.alpha and evolve.concurrency (rl_config.EvolveConfig declares them): values, no defaults
    k: int = Field(description="evolve.k")
    alpha: float = Field(description="evolve.alpha")
    concurrency: int = Field(description="evolve.concurrency (in each worker)")
    images_dir: str | None = Field(None, description="where rendered images go (a shared path with Ray workers)")
    base_seed: int = Field(0, description="seeds of rollout k of group g at step s derive from it (groups.py)")

    @classmethod
    def from_run_config(cls, run: RunConfig, **sampler: Any) -> EnvSpec:
        """A spec from a loaded ``RunConfig`` (e.g. an evolve file's ``env``) plus the sampler fields
        (``program_judge``, ``k``, ``alpha``, ``concurrency``, ``images_dir``, ``base_seed``)."""
        return cls.model_validate({**run.model_dump(mode="json"), **sampler})


class PoolConfig(BaseModel):
    """How rollouts are spread over workers."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "ray"] = Field("local", description="in-process workers, or Ray actors")
    workers: int = Field(1, ge=1, description="number of workers; a step's tasks are split evenly over them")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://head:10001'); "
                                                      "null: start a local Ray")
    ray_num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each worker actor")
    ray_num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each worker (e.g. a local renderer)")
    ray_env: dict[str, str] = Field(default_factory=dict, description="environment variables of the worker actors "
                                    "(e.g. GENEVOLVE_CACHE on shared storage); not for secrets, which Ray shows in "
                                    "its dashboard: set those where `ray start` runs")


class RolloutWorkerError(RuntimeError):
    """Some shares failed twice. ``finished`` maps task index -> its group for every share that
    succeeded, so the caller can keep them; ``failed_tasks`` lists the ids of the rest."""

    def __init__(self, message: str, finished: dict[int, list[Rollout]], failed_tasks: list[str]):
        super().__init__(message)
        self.finished = finished
        self.failed_tasks = failed_tasks


@dataclasses.dataclass
class _Failure:
    worker: int
    share: list[int]
    error: BaseException


class WorkerDied(RuntimeError):
    """The worker process is gone (a Ray actor died); its share must run elsewhere."""


def build_sampler(spec: EnvSpec, *, agent: Any = None) -> GroupSampler:
    """A ``GroupSampler`` from the spec, with genevolve.config's builders (backends by ``kind``).
    ``agent`` replaces the one the spec's policy would build (the trainer's in-process model)."""
    from genevolve.config import build_agent, build_judge, build_renderer
    from genevolve.judge import JUDGES
    from genevolve.registry import build

    renderer, judge = build_renderer(spec), build_judge(spec)
    if renderer is None or judge is None:
        raise ConfigError("the rollout environment needs a renderer and a judge (set `renderer:` and `judge:`)")
    program_judge = None
    if spec.program_judge is not None:
        program_judge = build(JUDGES, spec.program_judge.kind, "program judge", **spec.program_judge.options)
    return GroupSampler(agent=agent if agent is not None else build_agent(spec), renderer=renderer, judge=judge, program_judge=program_judge,
                        k=spec.k, alpha=spec.alpha, concurrency=spec.concurrency,
                        images_dir=Path(spec.images_dir) if spec.images_dir else None, base_seed=spec.base_seed)


class RolloutWorker:
    """One sampler built from an ``EnvSpec``: what a Ray actor wraps, or what runs in-process."""

    def __init__(self, spec: EnvSpec | dict[str, Any]) -> None:
        self.spec = spec if isinstance(spec, EnvSpec) else EnvSpec.model_validate(spec)
        self.sampler = build_sampler(self.spec)

    def ready(self) -> str:
        """The policy's label; calling it surfaces a constructor error of a Ray actor early."""
        return self.sampler.agent.policy.name

    def set_model(self, name: str) -> None:
        """Request ``name`` from the server from now on (the adapter a LoRA sync just loaded)."""
        policy = self.sampler.agent.policy
        old = getattr(policy, "model", None)
        if not isinstance(old, str):
            raise ConfigError(f"policy {policy.name!r} has no served model name to switch; serving a new LoRA "
                              f"adapter needs the `openai` policy pointed at vLLM or SGLang")
        policy.model = name
        if policy.name == f"openai:{old}":  # the default label follows the model, so trajectories say which
            policy.name = f"openai:{name}"

    async def sample(self, tasks: list[dict[str, Any]], *, step: int, groups: list[int]) -> list[list[str]]:
        """Rollout groups of ``tasks`` (dicts of ``Task`` fields) as JSON, one list per task."""
        rollouts = await self.sampler.sample([Task(**t) for t in tasks], step=step, groups=groups)
        return [[r.to_json() for r in group] for group in rollouts]


class _Local:
    def __init__(self, spec: EnvSpec) -> None:
        self.worker = RolloutWorker(spec)

    async def sample(self, tasks: list[dict[str, Any]], step: int, groups: list[int]) -> list[list[str]]:
        return await self.worker.sample(tasks, step=step, groups=groups)

    async def set_model(self, name: str) -> None:
        self.worker.set_model(name)

    def kill(self) -> None:
        pass


class _RayActor:
    def __init__(self, spec: EnvSpec, config: PoolConfig) -> None:
        import ray
        from ray.exceptions import RayActorError

        options: dict[str, Any] = dict(num_cpus=config.ray_num_cpus, num_gpus=config.ray_num_gpus)
        if config.ray_env:
            options["runtime_env"] = {"env_vars": dict(config.ray_env)}
        remote = ray.remote(RolloutWorker).options(**options)
        self.actor = remote.remote(spec.model_dump(mode="json"))
        try:
            ray.get(self.actor.ready.remote())
        except RayActorError as exc:  # the constructor raised: its error is the last line of Ray's traceback
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise WorkerDied(f"a Ray rollout worker failed to start: {lines[-1][:500] if lines else exc}") from exc

    async def sample(self, tasks: list[dict[str, Any]], step: int, groups: list[int]) -> list[list[str]]:
        return await self._call(self.actor.sample.remote(tasks, step=step, groups=groups))

    async def set_model(self, name: str) -> None:
        await self._call(self.actor.set_model.remote(name))

    async def _call(self, ref: Any) -> Any:
        from ray.exceptions import RayActorError

        try:
            return await ref
        except RayActorError as exc:
            raise WorkerDied(f"Ray actor died: {str(exc).splitlines()[0][:300]}") from exc

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)


class RolloutPool:
    """Samples a step's rollout groups over ``config.workers`` workers; see the module docstring.

    Example::

        pool = RolloutPool(EnvSpec.model_validate(yaml_section), PoolConfig(backend="ray", workers=4))
        groups = pool.sample(tasks, step=12)           # list[list[Rollout]], task order
        pool.set_model(lora_sync.publish(adapter_dir, step=12))
    """

    def __init__(self, spec: EnvSpec | dict[str, Any], config: PoolConfig | dict[str, Any] | None = None) -> None:
        self.spec = spec if isinstance(spec, EnvSpec) else EnvSpec.model_validate(spec)
        self.config = config if isinstance(config, PoolConfig) else PoolConfig.model_validate(config or {})
        self.model: str | None = None  # the served model name set by set_model, given to replacement workers
        if self.config.backend == "ray":
            _init_ray(self.config.ray_address)
        self._workers = [self._spawn() for _ in range(self.config.workers)]

    def sample(self, tasks: Sequence[Task], *, step: int) -> Groups:
        return asyncio.run(self.asample(tasks, step=step))

    def set_model(self, name: str) -> None:
        asyncio.run(self.aset_model(name))

    async def aset_model(self, name: str) -> None:
        """Every worker's policy requests ``name`` from now on.

        A worker that died is replaced, as during sampling, and the replacement starts on ``name``; if
        none can start, the dead one stays and its next share is retried on a live worker. Other errors
        (a policy with no model name to switch: the user's configuration) raise.
        """
        outs = await asyncio.gather(*(w.set_model(name) for w in self._workers), return_exceptions=True)
        for out in outs:
            if isinstance(out, BaseException) and not isinstance(out, WorkerDied):
                raise out
        self.model = name
        for w, out in enumerate(outs):
            if isinstance(out, WorkerDied):
                log.warning("rollout pool: worker %d died while switching to %s; replacing it", w, name)
                self._workers[w] = await self._replace(self._workers[w])

    async def asample(self, tasks: Sequence[Task], *, step: int) -> Groups:
        payload = [dataclasses.asdict(t) for t in tasks]
        jobs = [(w, share) for w, share in enumerate(_split(len(tasks), len(self._workers))) if share]
        done, failed = await self._round(jobs, payload, step)
        healthy = [w for w, _ in jobs if all(w != f.worker for f in failed)]
        retries = [(self._retry_target(f.worker, n, healthy), f.share) for n, f in enumerate(failed)]
        redone, refailed = await self._round(retries, payload, step)
        done.update(redone)
        if refailed:
            first = {tuple(f.share): f for f in failed}
            ids = [tasks[i].id for f in refailed for i in f.share]
            why = "; ".join(f"worker {first[tuple(f.share)].worker}: {_brief(first[tuple(f.share)].error)}; "
                            f"retry on worker {f.worker}: {_brief(f.error)}" for f in refailed)
            raise RolloutWorkerError(f"step {step}: tasks {ids} failed on two workers ({why}); "
                                     f"{len(done)} of {len(tasks)} groups finished", done, ids)
        return [done[i] for i in range(len(tasks))]

    async def _round(self, jobs: list[tuple[int, list[int]]], payload: list[dict[str, Any]],
                     step: int) -> tuple[dict[int, list[Rollout]], list[_Failure]]:
        """Run each (worker, share) job at once; a dead worker is replaced before this returns."""

        async def run(w: int, share: list[int]) -> Groups:
            rows = await self._workers[w].sample([payload[i] for i in share], step, share)
            return _decode(rows, share, self.spec.k, worker=w)

        outs = await asyncio.gather(*(run(w, share) for w, share in jobs), return_exceptions=True)
        done: dict[int, list[Rollout]] = {}
        failed: list[_Failure] = []
        for (w, share), out in zip(jobs, outs, strict=True):
            if isinstance(out, BaseException):
                _reraise_fatal(out)
                failed.append(_Failure(w, share, out))
                if isinstance(out, WorkerDied):
                    self._workers[w] = await self._replace(self._workers[w])
            else:
                done.update(zip(share, out, strict=True))
        return done, failed

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def _spawn(self) -> _Local | _RayActor:
        return _RayActor(self.spec, self.config) if self.config.backend == "ray" else _Local(self.spec)

    async def _replace(self, worker: _Local | _RayActor) -> _Local | _RayActor:
        """A fresh worker for a dead one, serving the current model; the dead one if none can start
        (its shares then fail and are reported, with the finished groups)."""
        try:
            fresh = await asyncio.to_thread(self._spawn)
            if self.model is not None:
                await fresh.set_model(self.model)
        except Exception as exc:  # a failed restart must not lose the finished groups
            log.warning("rollout pool: could not replace a dead worker: %s", _brief(exc))
            return worker
        return fresh

    def _retry_target(self, failed: int, n: int, ok: list[int]) -> int:
        """Another worker that succeeded this step (spread round-robin), else any other, else itself
        (a single worker, or a replaced actor)."""
        if ok:
            return ok[n % len(ok)]
        others = [w for w in range(len(self._workers)) if w != failed]
        return others[n % len(others)] if others else failed


def _init_ray(address: str | None) -> None:
    from genevolve.registry import require

    ray = require("ray", "ray")
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()


def _split(n_tasks: int, n_workers: int) -> list[list[int]]:
    """Contiguous, near-equal shares of the task indices (the first ``n_tasks % n_workers`` get one more)."""
    base, extra = divmod(n_tasks, n_workers)
    shares, start = [], 0
    for w in range(n_workers):
        size = base + (w < extra)
        shares.append(list(range(start, start + size)))
        start += size
    return shares


def _decode(rows: list[list[str]], share: list[int], k: int, *, worker: int) -> Groups:
    groups = [[Rollout.from_json(text) for text in row] for row in rows]
    shape_ok = len(groups) == len(share) and all(len(g) == k for g in groups)
    if not shape_ok or any(r.group != i for g, i in zip(groups, share, strict=False) for r in g):
        raise RuntimeError(f"worker {worker} returned groups that do not match tasks {share} with k={k}")
    return groups


def _reraise_fatal(exc: BaseException) -> None:
    """Interrupts and the user's configuration errors are not worker failures: retrying cannot help."""
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError | ConfigError):
        raise exc


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
