"""The offline world end to end on a small build: files, splits, GT self-checks, bench rows, SFT rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genevolve.bench.datasets import load_dataset
from genevolve.sft_rows import trajectory_from_sft_row
from genevolve.world import WORLD_VERSION, load_world
from genevolve.world.build import build_world, generate
from genevolve.world.splits import LeakageError, check_splits

SIZES = {"bench": 32, "rl": 16, "sft": 16}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=3, sizes=SIZES, wiki=False, rephrase=0.5)
    return out


def test_build_writes_every_file_with_the_version(world_dir: Path):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    assert manifest["version"] == WORLD_VERSION and manifest["counts"] == SIZES
    for name in ("bench.jsonl", "rl.jsonl", "sft.jsonl", "requests.jsonl"):
        lines = (world_dir / name).read_text().splitlines()
        assert lines and all(WORLD_VERSION in line for line in lines)
    assert WORLD_VERSION in (world_dir / "config.yaml").read_text()
    assert all(WORLD_VERSION in line for line in (world_dir / "corpus" / "facts.jsonl").read_text().splitlines())
    from PIL import Image

    world = load_world(world_dir)
    with Image.open(world.gt_image_path(world.requests[0])) as im:
        assert im.info.get("world_version") == WORLD_VERSION


def test_splits_share_no_request_or_pair_and_the_check_can_fail(world_dir: Path):
    world = load_world(world_dir)
    assert check_splits(world.requests) == SIZES
    leaked = [r.model_copy() for r in world.requests[:2]]
    leaked[1] = leaked[1].model_copy(update={"template": leaked[0].template, "entities": leaked[0].entities,
                                             "split": "rl" if leaked[0].split != "rl" else "sft"})
    with pytest.raises(LeakageError):
        check_splits(leaked)


def test_bench_rows_load_unchanged_with_constraints_in_meta(world_dir: Path):
    data = load_dataset(world_dir / "bench.jsonl")
    assert len(data.items) == SIZES["bench"] and data.kind == "genevolve"
    item = data.items[0]
    assert item.track in ("knowledge", "quality") and item.gt_image and Path(item.gt_image).is_file()
    assert item.meta["constraints"] and item.meta["hidden"]["question"] == item.request
    assert {i.track for i in data.items} == {"knowledge", "quality"}


def test_sft_rows_load_as_valid_trajectories(world_dir: Path):
    rows = [json.loads(line) for line in (world_dir / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == SIZES["sft"] and all(r["ok"] for r in rows)
    world = load_world(world_dir)
    for row in rows:
        traj = trajectory_from_sft_row(row, root=world_dir)
        assert traj.ok, traj.failure
        req = world.by_question[traj.request]
        assert {Path(r.path).stem for r in traj.program.references} == {e.image for e in req.entities}
        assert {c.name for c in traj.tool_calls} >= ({"search"} if req.facts else set()) | {"image_search"}
        assert {c.arguments["skill_name"] for c in traj.tool_calls if c.name == "query_knowledge"} == set(req.skills)
    sft = load_dataset(world_dir / "sft.jsonl")
    assert sft.kind == "sft" and len(sft.items) == SIZES["sft"]


def test_rephrased_requests_are_sft_only_and_the_expert_solves_them(world_dir: Path):
    world = load_world(world_dir)
    free = [r for r in world.requests if r.wording == "free"]
    manifest = json.loads((world_dir / "manifest.json").read_text())
    assert free and manifest["n_rephrased"] == len(free) and {r.split for r in free} == {"sft"}
    fresh = {r.id: r for r in generate(len(world.requests) * 2, seed=3)}
    assert all(r.question != fresh[r.id].question for r in free if r.id in fresh)
    rows = {json.loads(line)["id"]: json.loads(line) for line in (world_dir / "sft.jsonl").read_text().splitlines()}
    for req in free:  # the row asks the reworded question and still ends with the GT references
        traj = trajectory_from_sft_row(rows[req.id], root=world_dir)
        assert traj.request == req.question and traj.ok, traj.failure


def test_image_results_show_no_local_paths(world_dir: Path):
    text = (world_dir / "sft.jsonl").read_text()
    assert "IMG_001" in text and "file://" not in text and str(world_dir) not in text


def test_generation_is_deterministic_and_unique():
    a, b = generate(64, seed=5), generate(64, seed=5)
    assert [r.question for r in a] == [r.question for r in b]
    assert len({r.question for r in a}) == len(a) and len({r.pair_key for r in a}) == len(a)
    assert {r.category for r in a} >= {"capital", "counting", "text", "pose", "creative", "described"}
    assert generate(64, seed=6)[0].question != a[0].question or generate(64, seed=6)[5].question != a[5].question


def test_no_request_names_a_skill_or_a_tool():
    words = ("quantity_counting", "spatial_layout", "text_rendering", "attribute_binding", "skill",
             "image_search", "query_knowledge", "reference image")
    for r in generate(160, seed=1):
        assert not any(w in r.question.lower() for w in words), r.question
