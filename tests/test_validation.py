import re

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_ordinal_beyond_the_references_is_rejected():
    r = validate_answer(ans("the subject of the fifth reference image", "IMG_001", "IMG_002"),
                        images("IMG_001", "IMG_002"))
    assert r.fatal and Violation.ORDINAL_MISMATCH in r.names
    assert "5" in r.describe()  # the feedback names the ordinal the policy has to fix


def test_reordered_references_keep_what_each_ordinal_names():
    # The policy listed the mascot (IMG_002) first; after sorting it is the second reference.
    answer = {"gen_prompt": "The mascot from the first reference image before the tower of the 2nd reference",
              "reference_images": [{"img_id": "IMG_002", "note": "mascot"}, {"img_id": "IMG_001", "note": "tower"}]}
    r = validate_answer(answer, images("IMG_001", "IMG_002"))
    assert [x.img_id for x in r.program.references] == ["IMG_001", "IMG_002"]
    assert r.program.gen_prompt == "The mascot from the second reference image before the tower of the 1st reference"
    assert Violation.ORDINALS_REMAPPED in r.names


def test_remap_keeps_the_phrase_form():
    r = validate_answer(ans("First Reference Image, reference image 2 and reference #2", "IMG_009", "IMG_003"),
                        images("IMG_003", "IMG_009"))
    assert r.program.gen_prompt == "Second Reference Image, reference image 1 and reference #1"


def test_ordinal_naming_a_dropped_reference_is_rejected():
    # Truncation keeps IMG_001 and IMG_002; the phrase named IMG_003.
    r = validate_answer(ans("the dog of the first reference image", "IMG_003", "IMG_001", "IMG_002"),
                        images("IMG_001", "IMG_002", "IMG_003"))
    assert r.fatal and Violation.DROPPED_REFERENCE_IN_PROMPT in r.names
    # an unknown id is dropped too: the phrase that named it has nothing left to name
    r = validate_answer(ans("the first reference image beside the second reference image", "IMG_404", "IMG_001"),
                        images("IMG_001"))
    assert r.fatal and Violation.DROPPED_REFERENCE_IN_PROMPT in r.names


def test_dropped_duplicate_ordinal_names_the_kept_copy():
    r = validate_answer(ans("the second reference image and the third reference image", "IMG_001", "IMG_001",
                            "IMG_002"), images("IMG_001", "IMG_002"))
    assert r.program.gen_prompt == "the first reference image and the second reference image"


# Phrase forms the protocol recognises (see validation._ORDINAL_RE), written independently here.
_WORDS = ("first", "second", "third", "fourth", "fifth")
_SUFFIXED = ("1st", "2nd", "3rd", "4th", "5th")
_FORMS = (
    lambda n: f"the {_WORDS[n - 1]} reference image",
    lambda n: f"The {_WORDS[n - 1].title()} Reference",
    lambda n: f"the {_SUFFIXED[n - 1]} reference",
    lambda n: f"reference image {n}",
    lambda n: f"reference #{n}",
)
_READ = {w: i + 1 for i, w in enumerate(_WORDS)} | {w: i + 1 for i, w in enumerate(_SUFFIXED)}


def _named_ordinal(segment: str) -> int:
    """The one ordinal a generated segment names, read without the module's regex."""
    numbers = [_READ[w.lower()] for w in re.findall(r"[A-Za-z0-9]+", segment) if w.lower() in _READ]
    numbers += [int(d) for d in re.findall(r"(?:image |#)(\d+)$", segment)]
    assert len(numbers) == 1, segment
    return numbers[0]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_each_ordinal_names_the_same_reference_after_repair(data):
    n = data.draw(st.integers(1, 5), label="n_refs")
    numbers = data.draw(st.lists(st.integers(1, 999), min_size=n, max_size=n, unique=True), label="ids")
    written = [f"IMG_{k:03d}" for k in data.draw(st.permutations(numbers), label="order")]
    cap = data.draw(st.integers(1, 5), label="max_references")
    named = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(range(len(_FORMS)))),
                               min_size=1, max_size=6), label="phrases")
    prompt = "; ".join(f"subject {i} from {_FORMS[form](i + 1)}" for i, form in named)
    r = validate_answer({"gen_prompt": prompt, "reference_images": [{"img_id": x, "note": ""} for x in written]},
                        images(*written), max_references=cap)

    kept = sorted(written, key=lambda x: int(x[4:]))[:cap]
    if any(written[i] not in kept for i, _ in named):
        assert r.fatal and Violation.DROPPED_REFERENCE_IN_PROMPT in r.names
        return
    assert [x.img_id for x in r.program.references] == kept
    segments = r.program.gen_prompt.split("; ")
    assert len(segments) == len(named)
    for segment, (i, _) in zip(segments, named, strict=True):
        assert segment.startswith(f"subject {i} from ")
        assert r.program.references[_named_ordinal(segment) - 1].img_id == written[i], (prompt, segment)


def test_ordinals():
    assert mentioned_ordinals("the first reference image and the 2nd reference, reference image 3") == {1, 2, 3}
    assert ordinal_phrase(1) == "the second reference image"
