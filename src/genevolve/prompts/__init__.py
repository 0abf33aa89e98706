"""Prompt templates (text files beside this module) and the builders that fill them.

Templates use ``string.Template`` ($name placeholders) so JSON braces need no escaping.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from string import Template

from genevolve.skills import load_skills
from genevolve.tools.base import Tool

_DIR = Path(__file__).parent


@cache
def template(name: str) -> Template:
    return Template((_DIR / f"{name}.md").read_text(encoding="utf-8"))


def tool_definitions(tools: list[Tool]) -> str:
    """One JSON object per line: name, description, parameters (JSON schema)."""
    return "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.schema()}, ensure_ascii=False)
        for t in tools
    )


def skills_block() -> str:
    lines = []
    for skill in load_skills().values():
        lines.append(f"- `{skill.name}`: {skill.summary}\n  Call when: {skill.when_to_call}\n  Do not call when: {skill.when_not_to_call}")
    return "\n".join(lines)


def system_prompt(
    tools: list[Tool],
    *,
    max_policy_calls: int = 11,
    max_tool_calls: int = 10,
    min_references: int = 1,
    max_references: int = 2,
    guide: str | None = None,
) -> str:
    """The policy's system prompt. ``guide`` is the teacher's privileged experience block (training only)."""
    guide_block = template("teacher_guide").substitute(bundle=guide.strip()) if guide else ""
    return template("system").substitute(
        tools=tool_definitions(tools),
        skills=skills_block(),
        max_policy_calls=max_policy_calls,
        max_tool_calls=max_tool_calls,
        min_references=min_references,
        max_references=max_references,
        guide=guide_block,
    ).strip()


def final_step_message() -> str:
    return template("final_step").template.strip()


def format_error_message(code: str, message: str) -> str:
    return template("format_error").substitute(code=code, message=message).strip()


def answer_rejected_message(problems: str) -> str:
    return template("answer_rejected").substitute(problems=problems).strip()
