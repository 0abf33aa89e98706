"""The eight generation skills and the query_knowledge tool."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from genevolve.skills import SKILL_NAMES, Skill, SkillFileError, load_skills, parse_skill
from genevolve.tools.knowledge import KnowledgeArgs, KnowledgeTool

PAPER_ORDER = (
    "spatial_layout", "aesthetic_drawing", "text_rendering", "creative_drawing",
    "anatomy_body_coherence", "attribute_binding", "physical_material_consistency", "quantity_counting",
)


def test_all_eight_load_with_fields():
    assert SKILL_NAMES == PAPER_ORDER
    skills = load_skills()
    assert tuple(skills) == SKILL_NAMES
    for name, skill in skills.items():
        assert isinstance(skill, Skill) and skill.name == name
        for field in ("summary", "when_to_call", "when_not_to_call", "guidance"):
            assert getattr(skill, field).strip(), (name, field)
        assert 150 <= len(skill.guidance.split()) <= 350, name
        assert "---" not in skill.guidance.splitlines()[0]


def test_file_names_match_skill_names():
    files = {p.name for p in resources.files("genevolve.skills").iterdir() if p.name.endswith(".md")}
    assert files == {f"{n}.md" for n in SKILL_NAMES}


def test_skill_is_frozen_and_cached():
    skill = load_skills()["text_rendering"]
    with pytest.raises(AttributeError):
        skill.name = "x"  # type: ignore[misc]
    assert load_skills()["text_rendering"] is skill


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\n---\nbody", "must start"),
        ("---\nname: x\nbody", "not closed"),
        ("---\nname: x\nsummary: s\nwhen_to_call: w\n---\nbody", "when_not_to_call"),
        ("---\nname x\n---\nbody", "expected 'key: value'"),
        ("---\nname: a\nsummary: s\nwhen_to_call: w\nwhen_not_to_call: n\n---\n\n", "guidance body"),
    ],
)
def test_malformed_front_matter_names_the_file(text, needle):
    with pytest.raises(SkillFileError) as info:
        parse_skill(text, "broken.md")
    assert "broken.md" in str(info.value) and needle in str(info.value)


def test_continuation_lines_join():
    skill = parse_skill("---\nname: a\nsummary: one\n  two\nwhen_to_call: w\nwhen_not_to_call: n\n---\nG\n", "a.md")
    assert skill.summary == "one two" and skill.guidance == "G"


def test_custom_directory_checks_names(tmp_path: Path):
    root = resources.files("genevolve.skills")
    for name in SKILL_NAMES:
        (tmp_path / f"{name}.md").write_text((root / f"{name}.md").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_skills(tmp_path)["quantity_counting"].name == "quantity_counting"
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in SKILL_NAMES:
        (bad / f"{name}.md").write_text((tmp_path / f"{name}.md").read_text(encoding="utf-8"), encoding="utf-8")
    text = (bad / "spatial_layout.md").read_text(encoding="utf-8").replace("name: spatial_layout", "name: layout")
    (bad / "spatial_layout.md").write_text(text, encoding="utf-8")
    with pytest.raises(SkillFileError, match="spatial_layout.md"):
        load_skills(bad)
    (bad / "spatial_layout.md").unlink()
    with pytest.raises(SkillFileError, match="not found"):
        KnowledgeTool(skills_dir=bad)


async def test_query_knowledge_tool():
    tool = KnowledgeTool()
    assert tool.name == "query_knowledge"
    obs = await tool.acall(KnowledgeArgs(skill_name="quantity_counting"))
    skill = load_skills()["quantity_counting"]
    assert obs.text.startswith("Skill: quantity_counting\n") and skill.guidance in obs.text
    assert tool.schema()["properties"]["skill_name"]["enum"] == list(SKILL_NAMES)
    with pytest.raises(ValidationError):
        KnowledgeArgs(skill_name="counting")  # type: ignore[arg-type]
