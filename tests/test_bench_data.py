"""Dataset loaders and KScore/WiScore arithmetic (no backends)."""

import json

import pytest
from PIL import Image

from genevolve.bench.datasets import DatasetError, load_dataset
from genevolve.bench.summary import kscore_table, wiscore


def _bench(tmp_path, rows):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.jpg")
    (tmp_path / "bench.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return tmp_path


ROW = {"id": "k1", "question": "The Eiffel Tower at night", "gt_image": "images/a.jpg", "eval_type": "knowledge",
       "category": "places", "difficulty": "hard", "meta": {"src": "x"}}


def test_genevolve_bench_layout(tmp_path):
    ds = load_dataset(_bench(tmp_path, [ROW, {**ROW, "id": "q1", "question": None, "prompt": "Five cats",
                                               "eval_type": "quality"}]))
    a, b = ds.items
    assert ds.kind == "genevolve"
    assert (a.id, a.track, a.category, a.difficulty, a.meta) == ("k1", "knowledge", "places", "hard", {"src": "x"})
    assert a.gt_image == str((tmp_path / "images" / "a.jpg").resolve())
    assert b.request == "Five cats" and b.track == "quality"


@pytest.mark.parametrize("gt", ["../outside.jpg", "images/../../outside.jpg", "/etc/passwd"])
def test_gt_path_may_not_escape_the_root(tmp_path, gt):
    root = tmp_path / "ds"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    _bench(root, [{**ROW, "gt_image": gt}])
    with pytest.raises(DatasetError, match=r"bench\.jsonl:1: .*(outside the dataset root|absolute)"):
        load_dataset(root)


def test_bad_rows_name_file_and_line_or_are_skipped(tmp_path):
    root = _bench(tmp_path, [ROW, "{not json", {**ROW, "id": "x", "question": ""}, {**ROW, "id": "k1"},
                             {**ROW, "id": "m", "gt_image": "images/missing.jpg"}, {**ROW, "id": "ok2"}])
    with pytest.raises(DatasetError, match=r"bench\.jsonl:2: not valid JSON"):
        load_dataset(root)
    ds = load_dataset(root, skip_bad=True)
    assert [i.id for i in ds.items] == ["k1", "ok2"]
    assert [s.split(": ", 1)[0].rsplit(":", 1)[1] for s in ds.skipped] == ["2", "3", "4", "5"]
    assert "duplicate id 'k1'" in ds.skipped[2] and "not found" in ds.skipped[3]


def test_wise_plain_and_txt(tmp_path):
    wise = [{"prompt_id": 1, "Prompt": "Traditional food of the Mid-Autumn Festival", "Explanation": "mooncakes",
             "Category": "Cultural knowledge", "Subcategory": "Festival"},
            {"prompt_id": 705, "Prompt": "A plant that turns toward the sun", "Explanation": "sunflower",
             "Category": "Natural science", "Subcategory": "Biology"}]
    (tmp_path / "wise.json").write_text(json.dumps(wise))
    ds = load_dataset(tmp_path / "wise.json")
    assert ds.kind == "wise" and [i.id for i in ds.items] == ["1", "705"]
    assert ds.items[0].gt_image is None and ds.items[1].meta["Explanation"] == "sunflower"
    (tmp_path / "r.jsonl").write_text('{"request": "a red fox"}\n{"id": "b", "prompt": "a blue car"}\n')
    assert [(i.id, i.request) for i in load_dataset(tmp_path / "r.jsonl").items] == [("r-1", "a red fox"),
                                                                                   ("b", "a blue car")]
    (tmp_path / "r.txt").write_text("one\n\ntwo\n")
    assert [i.request for i in load_dataset(tmp_path / "r.txt", limit=5).items] == ["one", "two"]
    sft = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>Draw the logo"}],
           "images": ["x.jpg"]}
    (tmp_path / "sft.jsonl").write_text(json.dumps(sft) + "\n")
    assert load_dataset(tmp_path / "sft.jsonl").items[0].request == "Draw the logo"


def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow installed: the missing-extra error cannot happen")
    except ModuleNotFoundError:
        pass
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=r"pyarrow.*genevolve\[bench\]"):
        load_dataset(tmp_path / "d.parquet")


def _s(f, v, t, a):
    return {"faithfulness": f, "visual_correctness": v, "text_accuracy": t, "aesthetics": a,
            "overall": 0.1 * f + 0.4 * v + 0.4 * (0.5 if t is None else t) + 0.1 * a}


def test_kscore_by_hand():
    rows = [_s(1, 1, 1, 1), _s(0.5, 0, None, 1), _s(1, 0.5, 0, 0.5), None]
    t = kscore_table(rows)
    # columns over the 3 scored: F = 2.5/3, V = 1.5/3, A = 2.5/3; T over non-N/A = (1 + 0) / 2
    assert t["kscore"] == pytest.approx(0.1 * 2.5 / 3 + 0.4 * 0.5 + 0.4 * 0.5 + 0.1 * 2.5 / 3)
    assert (t["n"], t["n_scored"], t["n_failed"], t["n_text"]) == (4, 3, 1, 2)
    # missing as zero: F = 2.5/4, V = 1.5/4, A = 2.5/4; T = (1 + 0 + 0) / 3 (the failure joins the text column)
    assert t["kscore_missing_zero"] == pytest.approx(0.1 * 2.5 / 4 + 0.4 * 1.5 / 4 + 0.4 / 3 + 0.1 * 2.5 / 4)
    assert t["mean_overall"] == pytest.approx((1 + 0.35 + 0.35) / 3)
    all_na = kscore_table([_s(1, 0, None, 0)])
    assert all_na["text_all_na"] and all_na["kscore"] == pytest.approx(0.1 + 0.4 * 0.5)
    assert kscore_table([None])["kscore"] is None and kscore_table([None])["kscore_missing_zero"] == 0


def test_wiscore_formula_and_availability():
    def item(pid, cat=""):
        return {"id": str(pid), "category": cat, "meta": {"prompt_id": pid}}

    def wise(c, r, a):
        return {**_s(1, 1, None, 1), "diagnostics": {"wise": {"consistency": c, "realism": r, "aesthetic_quality": a}}}

    rows = [(item(1), wise(2, 2, 2)), (item(2), wise(0, 2, 2)), (item(450), wise(2, 0, 0)), (item(705), None)]
    w = wiscore(rows)
    # cultural: (1 + 0.3) / 2; time: 0.7; biology: failed -> 0; weights renormalised over the 3 present
    assert w["categories"] == pytest.approx({"cultural": 0.65, "time": 0.7, "biology": 0.0})
    assert w["overall"] == pytest.approx((0.4 * 0.65 + 0.167 * 0.7) / (0.4 + 0.167 + 0.1))
    assert w["weights_renormalised"]
    assert not wiscore([(item(1), _s(1, 1, None, 1))])["available"]
