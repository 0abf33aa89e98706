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
PROMPT_STYLES = ("full", "compact")


@cache
def template(name: str) -> Template:
    return Template((_DIR / f"{name}.md").read_text(encoding="utf-8"))


def tool_definitions(tools: list[Tool]) -> str:
    """One JSON object per line: name, description, parameters (JSON schema)."""
    return "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.schema()}, ensure_ascii=False)
        for t in tools
    )


def tool_signatures(tools: list[Tool]) -> str:
    """One line per tool for the compact prompt: ``name(arg, optional_arg?)``: first sentence of its description."""
    lines = []
    for t in tools:
        schema = t.schema()
        required = set(schema.get("required", []))
        args = ", ".join(a if a in required else f"{a}?" for a in schema.get("properties", {}))
        lines.append(f"- {t.name}({args}): {t.description.split('. ')[0].rstrip('.')}.")
    return "\n".join(lines)


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
    style: str = "full",
) -> str:
    """The policy's system prompt. ``guide`` is the teacher's privileged experience block (training only).

    ``style``: ``full`` (tool JSON schemas, skill guidance, every answer rule: about 2,000 tokens) or
    ``compact`` (one line per tool, skill names only: about 250 tokens), for small policies whose
    context cost is dominated by the prompt; a policy must be trained with the style it runs with."""
    guide_block = template("teacher_guide").substitute(bundle=guide.strip()) if guide else ""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")
    compact = style == "compact"
    return template("system_compact" if compact else "system").substitute(
        tools=tool_signatures(tools) if compact else tool_definitions(tools),
        skills=", ".join(load_skills()) if compact else skills_block(),
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
