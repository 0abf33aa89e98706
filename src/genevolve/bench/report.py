"""``genevolve report runs/NAME``: one self-contained HTML page for a benchmark run.

Images are embedded as JPEG data URIs (generated and GT at most 320 px on the long side, references at
96 px), so report.html can be mailed or moved alone; that costs about 15-30 KB per sample (a 594-item
GenEvolve-Bench run gives a page of roughly 10-20 MB). Filters (track, category, minimum score,
failures only) are a few lines of vanilla JS over ``data-*`` attributes; the initial filter can be set
in the URL hash, e.g. ``report.html#min=0.5&track=knowledge``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from genevolve.bench.runner import LOGS
from genevolve.bench.store import JsonlLog
from genevolve.bench.summary import CSV_FIELDS, summarize
from genevolve.html_report import _CSS, steps_html
from genevolve.types import Trajectory, write_text_atomic

THUMB_PX = 320
REF_PX = 96

_EXTRA_CSS = """
.sample{margin-top:1.5em} .wide{overflow-x:auto} .pair{display:flex;gap:.6em}
.pair figure{margin:0;font-size:.8em;text-align:center} .pair img{max-width:320px;border:1px solid #ccc}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;z-index:1}
#filters label{margin-right:1em} .fail{background:#fff4f4} td.num{text-align:right}
"""

_JS = """
(function(){
  const q = s => document.querySelector(s), samples = [...document.querySelectorAll('section.sample')];
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has('track')) q('#f-track').value = h.get('track');
  if (h.has('category')) q('#f-category').value = h.get('category');
  if (h.has('min')) q('#f-min').value = h.get('min');
  if (h.has('failed')) q('#f-failed').checked = true;
  function apply(){
    const t = q('#f-track').value, c = q('#f-category').value, m = parseFloat(q('#f-min').value || '0');
    const f = q('#f-failed').checked; let n = 0;
    for (const s of samples){
      const sc = parseFloat(s.dataset.score), failed = s.dataset.failed === '1';
      const show = (!t || s.dataset.track === t) && (!c || s.dataset.category === c)
        && (f ? failed : (isNaN(m) || m <= 0 || sc >= m));
      s.hidden = !show; if (show) n++;
    }
    q('#f-count').textContent = n + ' of ' + samples.length + ' shown';
  }
  for (const id of ['#f-track','#f-category','#f-min','#f-failed']) q(id).addEventListener('input', apply);
  apply(); document.body.dataset.ready = '1';
})();
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def data_uri(path: str | Path | None, px: int) -> str | None:
    """A small JPEG thumbnail of ``path`` as a data URI, or None when the file is missing or unreadable."""
    if not path or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _summary_tables(summary: dict[str, Any]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in CSV_FIELDS)
    rows = [("all", "all", summary["all"])] + [(f, g, t) for f, tables in summary["groups"].items()
                                               for g, t in tables.items()]
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(_fmt(v))}</td>' for v in
                                    [f, g, *[t.get(c) for c in CSV_FIELDS[2:]]]) + "</tr>" for f, g, t in rows)
    fails = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{v}</td></tr>" for k, v in summary["failures"].items())
    wise = summary.get("wiscore")
    wise_html = ""
    if wise:
        wise_html = (f"<p><b>WiScore</b>: {_e(_fmt(wise['overall']))} · {_e(json.dumps(wise['categories']))}</p>"
                     if wise["available"] else f"<p><b>WiScore</b>: unavailable ({_e(wise['why'])})</p>")
    note = (" <span class='bad'>heuristic judge: a cheap offline proxy, not a benchmark number</span>"
            if summary["heuristic_judge"] else "")
    return (f"<p>{summary['n_done']} of {summary['n_items']} items done"
            f"{'' if summary['complete'] else ' (incomplete run)'} · judges: {_e(', '.join(summary['judges']) or 'none')}"
            f"{note}</p><div class='wide'><table id='summary'><tr>{head}</tr>{body}</table></div>{wise_html}"
            f"<h3>failures by reason</h3><table id='failures'>{fails or '<tr><td>none</td></tr>'}</table>")


def _score_html(score: dict[str, Any] | None, failure: str | None, detail: str | None) -> str:
    if score is None:
        return f"<p class='bad'>failed: <b>{_e(failure)}</b> {_e(detail or '')}</p>"
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e('N/A' if score[k] is None else score[k])}</td></tr>"
                   for k in ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics"))
    cons = "".join(f"<li>{_e(c)}</li>" for c in score.get("constraints", []))
    return (f"<table class='score'><tr><th colspan=2>overall {score['overall']:.3f} · {_e(score['judge'])}</th></tr>"
            f"{rows}</table>{f'<ul>{cons}</ul>' if cons else ''}"
            f"<p class='muted'>{_e(score.get('rationale', ''))}</p>")


def _sample(out: Path, sid: str, logs: dict[str, JsonlLog], scores: dict[str, Any]) -> str:
    rec = logs["judge"].get(sid) or logs["render"].get(sid) or logs["agent"].get(sid) or {}
    item = rec.get("item", {})
    agent, render = logs["agent"].get(sid) or {}, logs["render"].get(sid) or {}
    traj = Trajectory.model_validate(agent["trajectory"]) if agent.get("trajectory") else None
    score = scores.get(sid)
    failure = rec.get("failure")
    chosen = {r.img_id for r in traj.program.references} if traj and traj.program else set()
    refs = []
    for im in traj.retrieved if traj else []:
        src = data_uri(im.path, REF_PX)
        if src:
            cls = "chosen" if im.img_id in chosen else ""
            refs.append(f'<figure class="{cls}"><img src="{src}" alt=""><figcaption>{_e(im.img_id)}<br>'
                        f"{_e(im.title[:40])}</figcaption></figure>")
    gen = data_uri(out / render["image"], THUMB_PX) if render.get("image") else None
    gt = data_uri(item.get("gt_image"), THUMB_PX)
    pair = "".join(f'<figure><img class="{cls}" src="{src}" alt="{cls}"><figcaption>{cap}</figcaption></figure>'
                   for cls, src, cap in (("generated", gen, "generated"), ("gt", gt, "ground truth")) if src)
    program = ""
    if traj and traj.program:
        lis = "".join(f"<li>{_e(r.img_id)} {_e(r.title)} <span class='muted'>({_e(r.note)})</span></li>"
                      for r in traj.program.references)
        program = f"<p class='program'><b>gen_prompt</b>: {_e(traj.program.gen_prompt)}</p><ul>{lis}</ul>"
    calls = ""
    if traj and traj.tool_calls:
        calls = "<p class='muted'>tool calls: " + "; ".join(
            f"{_e(c.name)}({_e(json.dumps(c.arguments, ensure_ascii=False)[:120])}){' ✗ ' + _e(c.error) if c.error else ''}"
            for c in traj.tool_calls) + "</p>"
    overall = score["overall"] if score else 0.0
    attrs = (f'data-id="{_e(sid)}" data-track="{_e(item.get("track", ""))}" data-category="{_e(item.get("category", ""))}" '
             f'data-score="{overall}" data-failed="{int(score is None)}"')
    return f"""
<section class="sample{' fail' if score is None else ''}" {attrs}>
<h2>{_e(sid)} <span class="muted">{_e(item.get('track', ''))} · {_e(item.get('category', ''))} · {_e(item.get('difficulty', ''))}</span></h2>
<p class="request"><b>request</b>: {_e(item.get('request', ''))}</p>
<div class="refs">{''.join(refs) or '<span class="muted">no references retrieved</span>'}</div>
<div class="row"><div class="steps">{steps_html(traj) if traj else ''}{calls}</div>
<div class="side"><div class="pair">{pair}</div>{program}{_score_html(score, failure, rec.get('detail'))}</div></div>
</section>"""


def _options(values: list[str]) -> str:
    return "<option value=''>all</option>" + "".join(f"<option>{_e(v)}</option>" for v in sorted(set(values)) if v)


def write_report(out: Path, path: Path | None = None) -> Path:
    """Write ``out/report.html`` (or ``path``) for the run folder ``out``; return its path."""
    out = Path(out)
    logs = {stage: JsonlLog(out / name).load() for stage, name in LOGS.items()}
    ids = list(dict.fromkeys([*logs["agent"].records, *logs["render"].records, *logs["judge"].records]))
    summary = summarize(out, ids)
    scores = {r["id"]: r["score"] for r in logs["judge"].records.values() if r["ok"]}
    items = [(logs["judge"].get(i) or logs["render"].get(i) or logs["agent"].get(i))["item"] for i in ids]
    filters = (f"<div id='filters'><label>track <select id='f-track'>{_options([i['track'] for i in items])}</select></label>"
               f"<label>category <select id='f-category'>{_options([i['category'] for i in items])}</select></label>"
               "<label>min score <input id='f-min' type='number' min='0' max='1' step='0.05' value='0'></label>"
               "<label><input id='f-failed' type='checkbox'> failures only</label> <span id='f-count'></span></div>")
    sections = "\n".join(_sample(out, i, logs, scores) for i in ids)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>genevolve bench · {_e(out.name)}</title>"
            f"<style>{_CSS}{_EXTRA_CSS}</style></head><body><h1>genevolve bench · {_e(out.name)}</h1>"
            f"{_summary_tables(summary)}{filters}{sections}<script>{_JS}</script></body></html>")
    path = path or out / "report.html"
    write_text_atomic(path, page)
    return path
