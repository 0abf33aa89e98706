from genevolve.types import RetrievedImage
from genevolve.validation import Violation, mentioned_ordinals, ordinal_phrase, validate_answer


def images(*ids, missing=()):
    return {i: RetrievedImage(img_id=i, title=f"t{i}", url=f"https://x/{i}.jpg",
                              path=None if i in missing else f"/tmp/{i}.jpg", error="download_failed" if i in missing else None)
            for i in ids}


def ans(prompt, *ids):
    return {"gen_prompt": prompt, "reference_images": [{"img_id": i, "note": f"n{i}"} for i in ids]}


def test_clean_answer_has_no_violations():
    r = validate_answer(ans("A cat like the first reference image", "IMG_001"), images("IMG_001"))
    assert r.issues == [] and r.program.references[0].path == "/tmp/IMG_001.jpg"
    assert r.program.references[0].title == "tIMG_001"


def test_sorted_deduplicated_capped():
    r = validate_answer(ans("x", "IMG_010", "IMG_002", "IMG_002", "IMG_009"), images("IMG_002", "IMG_009", "IMG_010"))
    assert [x.img_id for x in r.program.references] == ["IMG_002", "IMG_009"]
    assert set(r.names) == {Violation.DUPLICATE_REFERENCE, Violation.UNSORTED_REFERENCES, Violation.TOO_MANY_REFERENCES}


def test_numeric_sort_beyond_999():
    r = validate_answer(ans("x", "IMG_1000", "IMG_999"), images("IMG_999", "IMG_1000"))
    assert [x.img_id for x in r.program.references] == ["IMG_999", "IMG_1000"]


def test_unknown_and_unusable_ids_dropped():
    r = validate_answer(ans("x", "IMG_001", "IMG_002", "IMG_404"), images("IMG_001", "IMG_002", missing={"IMG_002"}))
    assert [x.img_id for x in r.program.references] == ["IMG_001"]
    assert Violation.UNKNOWN_IMAGE_ID in r.names and Violation.UNUSABLE_IMAGE in r.names


def test_fatal_violations_leave_no_program():
    assert validate_answer(ans("   ", "IMG_001"), images("IMG_001")).names == [Violation.EMPTY_PROMPT]
    r = validate_answer(ans("a cat", "IMG_404"), images("IMG_001"))
    assert r.fatal and Violation.NO_REFERENCE in r.names
    assert validate_answer(ans("a cat"), {}, min_references=0).program.gen_prompt == "a cat"


def test_ids_and_urls_repaired_in_prompt():
    r = validate_answer(ans("Draw IMG_002 beside IMG_001, see https://ex.com/a.jpg and IMG_007", "IMG_001", "IMG_002"),
                        images("IMG_001", "IMG_002"))
    p = r.program.gen_prompt
    assert "IMG_" not in p and "http" not in p
    assert "the second reference image beside the first reference image" in p
    assert {Violation.ID_IN_PROMPT, Violation.URL_IN_PROMPT} <= set(r.names)


def test_ordinal_mismatch():
    r = validate_answer(ans("the subject of the second reference image", "IMG_001"), images("IMG_001"))
    assert Violation.ORDINAL_MISMATCH in r.names and r.program is not None


def test_ordinals():
    assert mentioned_ordinals("the first reference image and the 2nd reference, reference image 3") == {1, 2, 3}
    assert ordinal_phrase(1) == "the second reference image"
