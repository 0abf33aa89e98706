"""Benchmark numbers from scores.jsonl: KScore (METHOD.md section 2) and WiScore (WISE).

KScore = 0.1·F̄ + 0.4·V̄ + 0.4·T̄ + 0.1·Ā over the column means of the scored samples, where T̄ is the
mean over samples whose text is not N/A. Choices METHOD.md leaves open:
- a group where every sample's text is N/A gets T̄ = 0.5 (the per-image N/A value) and says so
  (``text_all_na``);
- ``kscore_missing_zero`` counts failed samples as 0 in every column, text included (a failed sample
  joins the text denominator: nothing shows its text was N/A);
- items without a score record yet (an unfinished run) are ``pending``: in no mean, and
  ``complete`` is false.

WiScore (WISE, Niu et al. 2025; PKU-YuanGroup/WISE README): per image
(0.7·consistency + 0.2·realism + 0.1·aesthetic_quality) / 2 with each on 0–2; overall =
0.4·cultural + 0.167·time + 0.133·space + 0.1·biology + 0.1·physics + 0.1·chemistry over the
category means. Our judges score the GenEvolve rubric, not WISE's three dimensions, so WiScore is
computed only for scores carrying ``diagnostics["wise"] = {"consistency", "realism",
"aesthetic_quality"}``; otherwise the summary says it is unavailable and why.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

from genevolve.bench.runner import LOGS
from genevolve.bench.store import JsonlLog
from genevolve.judge.base import TEXT_NA_VALUE, WEIGHTS
from genevolve.types import write_text_atomic

DIMS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
GROUP_FIELDS = ("track", "category", "difficulty")
WISE_WEIGHTS = {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1}
# prompt_id ranges of the released WISE files (1-1000), used when Category does not name the domain
WISE_ID_RANGES = {"cultural": (1, 400), "time": (401, 567), "space": (568, 700), "biology": (701, 800),
                  "physics": (801, 900), "chemistry": (901, 1000)}
WISE_KEYWORDS = {"cultur": "cultural", "time": "time", "space": "space", "biolog": "biology",
                 "physic": "physics", "chemi": "chemistry"}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def kscore_table(scores: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Column means and KScore for one group. ``None`` entries are failed samples."""
    scored = [s for s in scores if s is not None]
    n_failed = len(scores) - len(scored)
    cols = {d: _mean([s[d] for s in scored]) for d in DIMS if d != "text_accuracy"}
    texts = [s["text_accuracy"] for s in scored if s["text_accuracy"] is not None]
    cols["text_accuracy"] = _mean(texts)
    table: dict[str, Any] = {"n": len(scores), "n_scored": len(scored), "n_failed": n_failed, "n_text": len(texts),
                             "text_all_na": bool(scored) and not texts, **{d: cols[d] for d in DIMS}}
    if scored:
        text = TEXT_NA_VALUE if cols["text_accuracy"] is None else cols["text_accuracy"]
        table["kscore"] = sum(WEIGHTS[d] * (text if d == "text_accuracy" else cols[d]) for d in DIMS)
        table["mean_overall"] = _mean([s["overall"] for s in scored])
    else:
        table["kscore"] = table["mean_overall"] = None
    if scores:
        zero = {d: sum(s[d] for s in scored) / len(scores) for d in DIMS if d != "text_accuracy"}
        text_n = len(texts) + n_failed
        zero["text_accuracy"] = sum(texts) / text_n if text_n else TEXT_NA_VALUE
        table["kscore_missing_zero"] = sum(WEIGHTS[d] * zero[d] for d in DIMS)
        table["mean_overall_missing_zero"] = sum(s["overall"] for s in scored) / len(scores)
    else:
        table["kscore_missing_zero"] = table["mean_overall_missing_zero"] = None
    return table


def wise_category(item: dict[str, Any]) -> str | None:
    """The WISE domain of an item: from its Category/Subcategory words, else its prompt_id range."""
    words = f"{item.get('category', '')} {item.get('meta', {}).get('Subcategory', '')}".lower()
    for key, cat in WISE_KEYWORDS.items():
        if key in words:
            return cat
    try:
        pid = int(item.get("meta", {}).get("prompt_id", item.get("id")))
    except (TypeError, ValueError):
        return None
    return next((c for c, (lo, hi) in WISE_ID_RANGES.items() if lo <= pid <= hi), None)


def wiscore(rows: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> dict[str, Any]:
    """WiScore over (item, score) pairs of WISE items; failed samples count 0."""
    per_cat: dict[str, list[float]] = {}
    missing = 0
    for item, score in rows:
        wise = (score or {}).get("diagnostics", {}).get("wise") if score else None
        if score is not None and not (isinstance(wise, dict) and {"consistency", "realism", "aesthetic_quality"} <= set(wise)):
            missing += 1
            continue
        value = 0.0 if score is None else (0.7 * wise["consistency"] + 0.2 * wise["realism"]
                                           + 0.1 * wise["aesthetic_quality"]) / 2
        per_cat.setdefault(wise_category(item) or "unknown", []).append(value)
    if missing:
        return {"available": False, "why": f"{missing} scored WISE samples lack diagnostics['wise'] "
                "(consistency, realism, aesthetic_quality on 0-2); the configured judge scores the GenEvolve "
                "rubric, not WISE's dimensions"}
    means = {c: sum(v) / len(v) for c, v in per_cat.items()}
    present = {c: w for c, w in WISE_WEIGHTS.items() if c in means}
    total = sum(present.values())
    overall = sum(w * means[c] for c, w in present.items()) / total if total else None
    return {"available": True, "overall": overall, "categories": means,
            "weights_renormalised": bool(present) and len(present) < len(WISE_WEIGHTS),
            "unknown_category": len(per_cat.get("unknown", []))}


def summarize(out: Path, item_ids: list[str] | None = None) -> dict[str, Any]:
    """Compute the summary of a run folder (``item_ids``: the dataset's ids, to count pending items)."""
    log = JsonlLog(out / LOGS["judge"]).load()
    records = log.records
    ids = item_ids if item_ids is not None else list(records)
    pending = [i for i in ids if i not in records]
    done = [records[i] for i in ids if i in records]
    samples = []
    for r in done:
        item, score = r["item"], r.get("score") if r["ok"] else None
        samples.append({"id": r["id"], **{f: item.get(f, "") for f in GROUP_FIELDS},
                        "overall": score["overall"] if score else None,
                        "overall_missing_zero": score["overall"] if score else 0.0,
                        "failure": r["failure"],
                        **({d: score[d] for d in DIMS} if score else {})})
    scores = [r.get("score") if r["ok"] else None for r in done]
    groups: dict[str, dict[str, Any]] = {}
    for f in GROUP_FIELDS:
        values = [r["item"].get(f, "") for r in done]
        if not any(values):
            continue
        groups[f] = {v or "(none)": kscore_table([s for s, x in zip(scores, values, strict=True) if x == v])
                     for v in sorted(set(values))}
    judges = sorted({s["judge"] for s in scores if s})
    summary: dict[str, Any] = {
        "run": out.name, "n_items": len(ids), "n_done": len(done), "n_pending": len(pending),
        "complete": not pending, "all": kscore_table(scores), "groups": groups,
        "failures": dict(sorted(Counter(r["failure"] for r in done if r["failure"]).items())),
        "judges": judges, "heuristic_judge": any(s.get("heuristic") for s in scores if s),
        "samples": samples,
    }
    wise_rows = [(r["item"], s) for r, s in zip(done, scores, strict=True) if r["item"].get("track") == "wise"]
    if wise_rows:
        summary["wiscore"] = wiscore(wise_rows)
    return summary


CSV_FIELDS = ("group_by", "group", "n", "n_scored", "n_failed", *DIMS, "n_text", "kscore", "kscore_missing_zero",
              "mean_overall", "mean_overall_missing_zero")


def summary_csv(summary: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerow({"group_by": "all", "group": "all", **summary["all"]})
    for field, tables in summary["groups"].items():
        for name, table in tables.items():
            w.writerow({"group_by": field, "group": name, **table})
    return buf.getvalue()


def write_summary(out: Path, item_ids: list[str] | None = None) -> dict[str, Any]:
    """Write summary.json and summary.csv (groups) into the run folder; return the summary."""
    import json

    summary = summarize(out, item_ids)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_text_atomic(out / "summary.csv", summary_csv(summary))
    return summary
