"""The offline world: verifiable requests with hidden constraints, a scripted expert and an exact judge.

Build one with ``genevolve world build --out DIR`` (or :func:`genevolve.world.build.build_world`),
then use it from Python::

    from genevolve.world import load_world
    world = load_world("DIR")
    reqs = world.split("rl")                     # WorldRequest records, hidden constraints included
    judge = world.judge()                        # WorldJudge: ascore(request, image, meta=render.meta)
    suff = world.sufficiency_judge()             # program-sufficiency judge: score(request, program)
    cfg = world.run_config(policy={"kind": "hf", "model": "..."})   # tools over the world, collage, judge
    agent = world.agent(policy=my_policy)        # or a ready Agent with the world's tools

See ``docs/world.md`` for the design and the measured discrimination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genevolve.world.records import WORLD_VERSION, EntitySlot, Fact, PromptPart, WorldRequest

__all__ = ["WORLD_VERSION", "EntitySlot", "Fact", "PromptPart", "World", "WorldRequest", "load_world"]


@dataclass
class World:
    """A built world folder. ``requests`` are all splits; ``by_question`` finds one by its exact text."""

    root: Path
    requests: list[WorldRequest]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def by_question(self) -> dict[str, WorldRequest]:
        return {r.question: r for r in self.requests}

    def split(self, name: str) -> list[WorldRequest]:
        """Requests of one split: ``bench``, ``rl`` or ``sft``."""
        return [r for r in self.requests if r.split == name]

    def gt_image_path(self, req: WorldRequest) -> Path:
        return self.root / req.gt_image

    def judge(self, **options: Any):
        from genevolve.world.judge import WorldJudge

        return WorldJudge(self.root, **options)

    def sufficiency_judge(self):
        from genevolve.world.judge import WorldSufficiencyJudge

        return WorldSufficiencyJudge(self.root)

    def expert(self, noise: float = 0.0, seed: int = 0):
        from genevolve.world.expert import WorldExpert

        return WorldExpert(self.root, noise=noise, seed=seed)

    def run_config(self, policy: dict[str, Any] | None = None, **agent: Any):
        """A RunConfig: ``policy`` (default: the expert), the world's search and image library, the
        collage renderer and the world judge; ``agent`` overrides AgentConfig fields."""
        from genevolve.config import load_config
        from genevolve.world.build import world_config

        wiki = bool(self.manifest.get("wiki", True))
        policy = policy or {"kind": "world-expert", "world": str(self.root)}
        data = world_config(self.root, policy, wiki=wiki)
        data["agent"].update(agent)
        return load_config(None, data)

    def agent(self, policy: Any = None, **agent: Any):
        """An Agent over the world's tools. ``policy``: a Policy instance, a spec dict, or None (the expert)."""
        from genevolve.agent import Agent
        from genevolve.config import build_agent
        from genevolve.policy.base import Policy

        if isinstance(policy, Policy):
            cfg = self.run_config(None, **agent)
            built = build_agent(cfg)
            return Agent(policy, list(built.tools.values()), cfg.agent)
        return build_agent(self.run_config(policy, **agent))


def load_world(root: str | Path) -> World:
    """Read a world folder written by ``genevolve world build``."""
    import json

    from genevolve.world.judge import load_requests

    root = Path(root).resolve()
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return World(root, list(load_requests(root).values()), manifest)
