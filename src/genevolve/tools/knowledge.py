"""The ``query_knowledge`` tool: returns one generation skill's full guidance (see ``genevolve.skills``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genevolve.skills import SkillName, load_skills
from genevolve.tools.base import Tool, ToolArgs
from genevolve.types import Observation


class KnowledgeArgs(ToolArgs):
    skill_name: SkillName = Field(description="which generation skill to read")


class KnowledgeTool(Tool):
    """Serves the eight skill files; ``skills_dir`` swaps in edited copies (same eight file names)."""

    name = "query_knowledge"
    description = (
        "Read the prompt-writing guidance of one generation skill before writing the final prompt."
    )
    Args = KnowledgeArgs
    backend = "skills"

    def __init__(self, skills_dir: str | Path | None = None):
        # loaded eagerly so a malformed custom skill file fails at setup, not mid-rollout
        self.skills = load_skills(skills_dir)

    async def acall(self, args: KnowledgeArgs) -> Observation:
        skill = self.skills[args.skill_name]
        return Observation(text=f"Skill: {skill.name}\n{skill.summary}\n\n{skill.guidance}")
