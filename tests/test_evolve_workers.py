"""Rollout workers: the pool gives the groups a single GroupSampler gives, locally and over Ray,
and a failed worker's share is retried on another without losing finished groups."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from PIL import Image

from genevolve.config import RunConfig
from genevolve.evolve.groups import Task
from genevolve.evolve.workers import (
    EnvSpec,
    RolloutPool,
    RolloutWorkerError,
    WorkerDied,
    _split,
    build_sampler,
)
from genevolve.registry import ConfigError
from genevolve.render.collage import CollageRenderer
from genevolve.types import Program, Reference

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny environment: a scripted policy by "module:Class", one local image, collage, heuristic judge."""
    root = tmp_path_factory.mktemp("env")
    folder = root / "images"
    folder.mkdir()
    Image.new("RGB", (48, 48), (220, 20, 20)).save(folder / "red_apple.png")
    gt = root / "gt.png"
    CollageRenderer(128, 128).render(Program(
        gen_prompt="Three red apples from the first reference image on the left.",
        references=[Reference(img_id="IMG_001", path=str(folder / "red_apple.png"))])).image.save(gt)
    spec = {
        "policy": {"kind": "tests.rollout_policies:SeedPolicy"},
        "image_search": {"kind": "local", "folders": [str(folder)], "openmoji": False, "semantic_fallback": False,
                         "cache_dir": str(root / "cache")},
        "knowledge": False,
        "renderer": {"kind": "collage", "width": 128, "height": 128},
        "judge": {"kind": "heuristic", "embeddings": False},
        "agent": {"max_policy_calls": 3, "structured_decoding": False},
        "k": 3, "alpha": 0.0, "concurrency": 4,
    }
    tasks = [Task(f"t{i}", f"{n} red apples on the left", str(gt)) for i, n in enumerate(["Three", "Two", "One",
                                                                                        "Four", "Five"])]
    return root, spec, tasks


def essence(groups) -> list[list[dict]]:
    """What must agree between two runs: everything but wall-clock fields and the image folder."""
    out = []
    for group in groups:
        rows = []
        for r in group:
            d = r.model_dump(exclude={"image_path"})
            d["trajectory"] = {k: v for k, v in d["trajectory"].items() if k not in ("timings", "created", "id")}
            d["trajectory"]["tool_calls"] = [{**c, "seconds": 0} for c in d["trajectory"]["tool_calls"]]
            rows.append(d)
        out.append(rows)
    return out


def with_dir(spec: dict, path: Path) -> dict:
    return {**spec, "images_dir": str(path)}


def test_split_is_contiguous_even_and_complete():
    assert _split(5, 3) == [[0, 1], [2, 3], [4]]
    assert _split(2, 4) == [[0], [1], [], []]
    for n in range(12):
        for w in range(1, 6):
            shares = _split(n, w)
            assert sum(shares, []) == list(range(n)) and max(map(len, shares)) - min(map(len, shares)) <= 1


def test_local_pool_matches_the_group_sampler(env):
    root, spec, tasks = env
    run = RunConfig.model_validate({k: v for k, v in spec.items() if k not in ("k", "alpha", "concurrency")})
    from_run = EnvSpec.from_run_config(run, k=3, alpha=0.0, concurrency=4, images_dir=str(root / "direct"))
    assert from_run == EnvSpec.model_validate(with_dir(spec, root / "direct"))
    direct = asyncio.run(build_sampler(from_run).sample(tasks, step=4))
    pool = RolloutPool(with_dir(spec, root / "pool"), {"workers": 3})
    pooled = pool.sample(tasks, step=4)
    assert essence(pooled) == essence(direct)
    assert [[r.group for r in g] for g in pooled] == [[i] * 3 for i in range(5)]
    assert len({r.trajectory.program.gen_prompt for r in pooled[0]}) > 1  # rollouts of a group differ
    assert Path(pooled[4][2].image_path) == root / "pool" / "step_000004" / "g04_k2.png"
    assert Path(pooled[4][2].image_path).is_file()


def test_set_model_switches_every_worker(env):
    root, spec, tasks = env
    pool = RolloutPool(with_dir(spec, root / "switch"), {"workers": 2})
    pool.set_model("policy-step-000003")
    groups = pool.sample(tasks[:2], step=0)
    finals = [r.trajectory.turns[-1].content for g in groups for r in g]
    assert all("served by policy-step-000003" in text for text in finals)
    assert {r.trajectory.backends.get("policy") for g in groups for r in g} == {"openai:policy-step-000003"}


def test_a_worker_that_dies_while_switching_models_is_replaced_on_the_new_model(env):
    """As during sampling: the dead worker is replaced, and the replacement serves the new adapter."""
    root, spec, tasks = env
    pool = RolloutPool(with_dir(spec, root / "died"), {"workers": 2})
    dead = pool._workers[0]

    async def dies(name):
        raise WorkerDied("Ray actor died: the node went away")

    dead.set_model = dies
    pool.set_model("policy-step-000009")
    assert pool.model == "policy-step-000009" and pool._workers[0] is not dead
    groups = pool.sample(tasks[:2], step=0)  # one task on each worker
    assert {r.trajectory.backends.get("policy") for g in groups for r in g} == {"openai:policy-step-000009"}


def test_a_worker_that_raises_is_retried_on_another(env):
    root, spec, tasks = env
    pool = RolloutPool(with_dir(spec, root / "retry"), {"workers": 2})
    expected = essence(pool.sample(tasks, step=1))
    calls = []

    async def broken(tasks, step, groups):
        calls.append(groups)
        raise RuntimeError("out of memory")

    pool._workers[0].sample = broken
    assert essence(pool.sample(tasks, step=1)) == expected
    assert calls == [[0, 1, 2]]  # its share ran once there, then on worker 1


def test_a_share_failing_twice_is_reported_with_the_finished_groups(env):
    root, spec, tasks = env
    crashing = {**with_dir(spec, root / "crash"), "policy": {"kind": "tests.rollout_policies:CrashingPolicy"}}
    items = [*tasks[:3], Task("bad", "CRASH three apples", tasks[0].gt_image)]
    pool = RolloutPool(crashing, {"workers": 2})
    with pytest.raises(RolloutWorkerError, match=r"tasks \['t2', 'bad'\] failed on two workers") as info:
        pool.sample(items, step=0)
    assert "worker bug" in str(info.value)
    assert sorted(info.value.finished) == [0, 1] and info.value.failed_tasks == ["t2", "bad"]
    assert all(len(g) == 3 for g in info.value.finished.values())


def test_config_errors_are_not_retried(env):
    root, spec, tasks = env
    with pytest.raises(ConfigError, match="renderer and a judge"):
        RolloutPool({**spec, "judge": None})
    pool = RolloutPool({**spec, "policy": {"kind": "tests.rollout_policies:SeedPolicy"}}, {"workers": 2})

    class NoModel:
        name = "plain"
    for w in pool._workers:
        w.worker.sampler.agent.policy = NoModel()
    with pytest.raises(ConfigError, match="openai"):
        pool.set_model("x")


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'genevolve[ray]')")
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()


def test_ray_workers_match_the_group_sampler_and_survive_a_dead_actor(env, ray_session):
    root, spec, tasks = env
    direct = asyncio.run(build_sampler(EnvSpec.model_validate(with_dir(spec, root / "rdirect"))).sample(tasks, step=7))
    pool = RolloutPool(with_dir(spec, root / "ray"), {"backend": "ray", "workers": 2, "ray_num_cpus": 1,
                                                      "ray_env": {"GENEVOLVE_TEST_MARK": "on-worker"}})
    try:
        assert essence(pool.sample(tasks, step=7)) == essence(direct)
        assert ray_session.get(pool._workers[1].actor.__ray_call__.remote(
            lambda self: os.environ.get("GENEVOLVE_TEST_MARK"))) == "on-worker"
        pool.set_model("policy-step-000007")
        dead = pool._workers[0]
        ray_session.kill(dead.actor)
        groups = pool.sample(tasks, step=7)  # worker 0's share is retried on worker 1
        assert [g[0].trajectory.backends["policy"] for g in groups] == ["openai:policy-step-000007"] * 5
        assert pool._workers[0] is not dead  # replaced, and the replacement serves the current model
        assert asyncio.run(_call(pool, 0)) == "openai:policy-step-000007"
    finally:
        pool.close()


async def _call(pool, w):
    return await pool._workers[w]._call(pool._workers[w].actor.ready.remote())


def test_worker_died_is_what_a_dead_actor_raises(ray_session):
    from genevolve.evolve.workers import _RayActor

    @ray_session.remote
    class Dies:
        def ready(self):
            os._exit(1)

    wrapper = _RayActor.__new__(_RayActor)
    wrapper.actor = Dies.remote()
    with pytest.raises(WorkerDied, match="Ray actor died"):
        asyncio.run(wrapper._call(wrapper.actor.ready.remote()))


def test_a_ray_worker_that_cannot_start_names_the_cause(env, ray_session):
    _, spec, _ = env
    with pytest.raises(WorkerDied, match="ConfigError: the rollout environment needs a renderer and a judge"):
        RolloutPool({**spec, "judge": None}, {"backend": "ray"})
