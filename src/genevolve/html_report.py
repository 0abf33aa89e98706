"""A self-contained HTML page for a set of solved requests (the demo, and later benchmark reports).

Each sample folder holds trajectory.json, program.json, image.png, render.json and score.json (see
genevolve.pipeline). Reference images may live in a cache outside the run; they are copied into
``<sample>/references/`` so the page and its folder can be moved or shared as they are.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from genevolve.judge.base import Score
from genevolve.protocol import parse_tool_response, parse_turn
from genevolve.types import Trajectory, write_text_atomic

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:2.5em;border-top:1px solid #ddd;padding-top:1em}
.row{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
.steps{flex:1 1 520px;min-width:320px} .side{flex:0 0 360px}
.step{border-left:3px solid #bbb;padding:.3em .8em;margin:.5em 0;background:#fafafa;font-size:.9em}
.step.policy{border-color:#8a4fff} .step.tool{border-color:#f0a020} .step.err{border-color:#d33}
.think{color:#666;font-style:italic} pre{white-space:pre-wrap;margin:.2em 0;font-size:.85em}
.refs{display:flex;gap:.5em;flex-wrap:wrap} .refs figure{margin:0;width:96px;font-size:.75em;text-align:center}
.refs img{width:96px;height:96px;object-fit:contain;background:#f3f3f3;border:2px solid transparent}
.refs figure.chosen img{border-color:#2a2} img.render{width:360px;border:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em} td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}
.bad{color:#c22} .ok{color:#282} .muted{color:#777;font-size:.85em}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _clip(text: str, n: int = 700) -> str:
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"


def _copy_reference(path: str | None, folder: Path) -> str | None:
    """Copy a reference into the sample folder; return its path relative to the page's folder."""
    if not path or not Path(path).is_file():
        return None
    target = folder / "references" / Path(path).name
    target.parent.mkdir(exist_ok=True)
    if not target.exists():
        shutil.copyfile(path, target)
    return f"{folder.name}/references/{target.name}"


def steps_html(traj: Trajectory) -> str:
    """The trajectory as a list of policy and tool steps (HTML)."""
    out = []
    for turn in traj.turns:
        if turn.role == "system" or turn.kind == "request":
            continue
        if turn.role == "assistant":
            parsed = parse_turn(turn.content)
            think = f'<div class="think">{_e(_clip(parsed.think or "", 400))}</div>' if parsed.think else ""
            if parsed.tool_call:
                action = f"→ <b>{_e(parsed.tool_call.name)}</b> <code>{_e(json.dumps(parsed.tool_call.arguments, ensure_ascii=False))}</code>"
            elif parsed.answer is not None:
                action = "→ <b>answer</b>"
            else:
                action = f'<pre class="bad">{_e(_clip(turn.content))}</pre>'
            out.append(f'<div class="step policy">{think}{action}</div>')
        else:
            body = parse_tool_response(turn.content) or turn.content
            cls = "err" if turn.kind in ("format_error", "answer_rejected") else "tool"
            out.append(f'<div class="step {cls}"><span class="muted">{_e(turn.kind or turn.role)}</span>'
                       f"<pre>{_e(_clip(body))}</pre></div>")
    return "\n".join(out)


def _score_table(score: Score) -> str:
    rows = [("faithfulness", score.faithfulness), ("visual correctness", score.visual_correctness),
            ("text accuracy", "N/A" if score.text_accuracy is None else score.text_accuracy),
            ("aesthetics", score.aesthetics), ("overall", f"{score.overall:.3f}")]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    kind = " (heuristic)" if score.heuristic else ""
    return f'<table><tr><th colspan="2">score · {_e(score.judge)}{kind}</th></tr>{body}</table>'


def sample_section(folder: Path, title: str) -> str:
    traj = Trajectory.load(folder / "trajectory.json")
    chosen = {r.img_id for r in traj.program.references} if traj.program else set()
    figures = []
    for image in traj.retrieved:
        src = _copy_reference(image.path, folder)
        if src is None:
            continue
        cls = "chosen" if image.img_id in chosen else ""
        figures.append(f'<figure class="{cls}"><img src="{_e(src)}" alt=""><figcaption>{_e(image.img_id)}<br>'
                       f"{_e(image.title[:40])}</figcaption></figure>")
    status = (f'<span class="ok">{_e(traj.stop_reason)}</span>' if traj.ok
              else f'<span class="bad">{_e(traj.stop_reason)}: {_e(traj.failure)}</span>')
    side = []
    if (folder / "image.png").is_file():
        side.append(f'<img class="render" src="{_e(folder.name)}/image.png" alt="rendered image">')
    if traj.program:
        refs = "".join(f"<li>{_e(ordinal)}: {_e(r.img_id)} {_e(r.title)} <span class='muted'>({_e(r.note)})</span></li>"
                       for ordinal, r in zip(("first", "second", "third", "fourth", "fifth"), traj.program.references, strict=False))
        side.append(f"<p><b>gen_prompt</b>: {_e(traj.program.gen_prompt)}</p><ul>{refs}</ul>")
    if (folder / "score.json").is_file():
        side.append(_score_table(Score.model_validate_json((folder / "score.json").read_text(encoding="utf-8"))))
    meta = (f"{traj.n_policy_calls} policy calls · {traj.n_tool_calls} tool calls · "
            f"{traj.n_format_errors} format errors · {traj.timings.get('total', 0):.1f} s")
    if traj.violations:
        meta += " · violations: " + ", ".join(traj.violations)
    return f"""
<h2>{_e(title)}</h2>
<p><b>request</b>: {_e(traj.request)}<br><span class="muted">{status} · {_e(meta)}</span></p>
<div class="refs">{''.join(figures) or '<span class="muted">no images retrieved</span>'}</div>
<div class="row"><div class="steps">{steps_html(traj)}</div><div class="side">{''.join(side)}</div></div>
"""


def write_page(root: Path, samples: list[tuple[str, Path]], *, title: str, intro: str = "") -> Path:
    """Write ``root/index.html`` for ``(title, sample folder)`` pairs (folders inside ``root``)."""
    sections = "\n".join(sample_section(folder, name) for name, folder in samples)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{_e(title)}</h1><p>{intro}</p>{sections}</body></html>")
    path = root / "index.html"
    write_text_atomic(path, page)
    return path
