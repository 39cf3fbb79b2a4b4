"""The leaderboard web pages: one sortable table per dataset × threat model, and one page per entry.

The same renderer serves the live server (:mod:`robustkit.leaderboard.server`) and the static site
that ``robustkit leaderboard build DIR --out SITE`` writes from run directories. Pages are plain HTML
with an inline SVG plot and one small script (``board.js``, loaded from the site itself, so a strict
Content-Security-Policy holds) that sorts a table when a column header is clicked. Every string from
an entry is HTML-escaped; links are shown as links only when they are http(s) URLs.

Columns: RobustBench's (rank, model, paper and venue, architecture, extra data, clean, robust,
external, reported, forward passes) plus ours (robust accuracy single-draw / majority / worst-of-M,
n with the 95% interval, EOT, re-evaluations, NFE, GPU-hours) and badges for stochastic, adaptive
and unreliable entries.

Example::

    >>> from robustkit.leaderboard.site import render_index
    >>> "<table" in render_index([], link=lambda row: "#", script_url="board.js")
    False
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..eval.record import PROTOCOLS
from ..eval.runner import atomic_write_text
from .entry import Entry, EntryError, EntryMetadata, load_run_entry
from .examples import summarize_examples
from .robustbench import eps_string

log = logging.getLogger(__name__)

PROTOCOL_LABELS = {"single_draw": "single draw", "majority": "majority", "worst_of_m": "worst of M"}

BOARD_JS = """\
// robustkit leaderboard: click a column header to sort its table (again to reverse).
(function () {
  "use strict";
  function key(cell, type) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { v = cell.textContent.trim(); }
    if (type === "number") { var x = parseFloat(v); return isNaN(x) ? -Infinity : x; }
    return v.toLowerCase();
  }
  function sortBy(table, th) {
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute("data-type") || "text";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index], type), y = key(b.cells[index], type);
      if (x < y) { return asc ? -1 : 1; }
      if (x > y) { return asc ? 1 : -1; }
      return 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  function init() {
    var tables = document.querySelectorAll("table.board");
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        var button = th.querySelector("button");
        if (button) { button.addEventListener("click", function () { sortBy(table, th); }); }
      });
    });
    document.documentElement.setAttribute("data-sortable", "ready");
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
"""

_STYLE = """\
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.3em 0.5em;text-align:left;vertical-align:top}
th button{font:inherit;font-weight:bold;background:none;border:0;cursor:pointer;padding:0}
th[aria-sort=ascending] button::after{content:" \\25B2"} th[aria-sort=descending] button::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:3px;padding:0 0.4em;margin:0 0.2em;font-size:0.8em;color:#fff}
.badge.stochastic{background:#6a4c93}.badge.adaptive{background:#1982c4}.badge.unreliable{background:#d62828}
.badge.batch{background:#8a5a00}
.muted{color:#777}.warn{background:#fff3cd;padding:0.5em;border:1px solid #e0c060}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _safe_link(url: str | None, text: str) -> str:
    if url and url.split(":", 1)[0].lower() in ("http", "https"):
        return f'<a href="{_e(url)}" rel="nofollow noopener">{_e(text)}</a>'
    return _e(text)


def badges(e: Entry) -> str:
    out = []
    if e.stochastic:
        out.append('<span class="badge stochastic" title="randomized defense: ranked by worst-of-M">stochastic</span>')
    if e.adapts_at_test_time:
        out.append('<span class="badge adaptive" title="adapts / optimises at test time">adaptive</span>')
    if e.batch_dependent:
        size = f"batches of {e.batch_size}" if e.batch_size is not None else "an unrecorded batch size"
        out.append(f'<span class="badge batch" title="predictions depend on the batch; evaluated with {size}">'
                   'batch-dependent</span>')
    if e.unreliable:
        out.append('<span class="badge unreliable" title="a blocking sanity check failed">unreliable</span>')
    return "".join(out)


def _page(title: str, body: str, script_url: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f'<style>{_STYLE}</style>'
            f'<script src="{_e(script_url)}" defer></script></head>\n<body>\n{body}\n</body></html>\n')


# (header, data-type, cell) per column of a board table
def _columns() -> list[tuple[str, str, Callable[[int, Entry, dict, str], tuple[str, str | float]]]]:
    def num(v: float | None) -> tuple[str, float]:
        return _pct(v), (-1.0 if v is None else round(100 * v, 6))

    return [
        ("Rank", "number", lambda r, e, row, link: (str(r), r)),
        ("Model", "text", lambda r, e, row, link: (f'<a class="entry-link" href="{_e(link)}">{_e(e.name)}</a> '
                                                   f"{badges(e)}", e.name)),
        ("Paper", "text", lambda r, e, row, link: (
            _safe_link(e.link, e.paper_title or e.defense) + (f' <span class="muted">{_e(e.venue)}</span>'
                                                              if e.venue else ""), e.paper_title or e.defense)),
        ("Architecture", "text", lambda r, e, row, link: (_e(e.architecture or "–"), e.architecture or "")),
        ("eps", "number", lambda r, e, row, link: (_e(eps_string(e.eps, e.threat_model)), e.eps)),
        ("Extra data", "text", lambda r, e, row, link: (
            {True: "yes", False: "no", None: "–"}[e.additional_data], str(e.additional_data))),
        ("Clean (%)", "number", lambda r, e, row, link: num(e.clean_accuracy.value)),
        ("Robust (%)", "number", lambda r, e, row, link: num(e.board_accuracy)),
        ("Single draw (%)", "number", lambda r, e, row, link: num(e.robust["single_draw"].value)),
        ("Majority (%)", "number", lambda r, e, row, link: num(e.robust["majority"].value)),
        ("Worst of M (%)", "number", lambda r, e, row, link: num(e.robust["worst_of_m"].value)),
        ("n (95% CI)", "number", lambda r, e, row, link: (
            f"{e.n_examples} [{_pct(e.robust_accuracy.ci_low)}, {_pct(e.robust_accuracy.ci_high)}]", e.n_examples)),
        ("External (%)", "number", lambda r, e, row, link: num(e.external.robust_accuracy if e.external else None)),
        ("Reported (%)", "number", lambda r, e, row, link: num(e.reported)),
        ("M", "number", lambda r, e, row, link: (str(e.n_reeval), e.n_reeval)),
        ("EOT", "number", lambda r, e, row, link: (str(e.eot), e.eot)),
        ("Forward passes", "number", lambda r, e, row, link: (str(e.forward_passes_per_prediction),
                                                              e.forward_passes_per_prediction)),
        ("NFE", "number", lambda r, e, row, link: (f"{e.forward_nfe + e.backward_nfe:,}",
                                                   e.forward_nfe + e.backward_nfe)),
        ("GPU-h", "number", lambda r, e, row, link: (f"{e.gpu_hours:.3g}", e.gpu_hours)),
    ]


def render_index(rows: Sequence[dict[str, Any]], *, link: Callable[[dict[str, Any]], str], script_url: str,
                 title: str = "robustkit leaderboard") -> str:
    """The board page. ``rows`` hold ``{"entry": Entry dict, ...}``; ``link(row)`` is the entry page URL."""
    groups: dict[tuple[str, str], list[tuple[Entry, dict]]] = {}
    for row in rows:
        e = Entry.from_dict(row["entry"])
        groups.setdefault((e.dataset, e.threat_model), []).append((e, row))
    cols = _columns()
    parts = [f"<h1>{_e(title)}</h1>",
             '<p>Robust accuracy ranks stochastic defenses by <b>worst of M</b> re-evaluations (every adversarial '
             'example re-classified M times, counted only if always correct); an external third-party result '
             'replaces it when lower. Click a column header to sort.</p>']
    if not groups:
        parts.append('<p class="muted" id="empty">No entries yet.</p>')
    for (dataset, tm), items in sorted(groups.items()):
        items.sort(key=lambda it: (-it[0].board_accuracy, it[0].name))
        table_id = f"board-{dataset}-{tm}"
        head = "".join(f'<th data-type="{t}"><button type="button">{_e(h)}</button></th>' for h, t, _ in cols)
        body = []
        for rank, (e, row) in enumerate(items, 1):
            cells = []
            for h, t, cell in cols:
                text, key = cell(rank, e, row, link(row))
                cls = ' class="num"' if t == "number" else ""
                cells.append(f'<td{cls} data-sort="{_e(key)}">{text}</td>')
            body.append(f'<tr data-name="{_e(e.name)}">{"".join(cells)}</tr>')
        parts.append(f'<h2 id="{_e(table_id)}-title">{_e(dataset)} — {_e(tm)}</h2>'
                     f'<table class="board" id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
                     f'<tbody>{"".join(body)}</tbody></table>')
    return _page(title, "\n".join(parts), script_url)


def _stat_cell(s) -> str:
    return f"{_pct(s.value)} <span class='muted'>[{_pct(s.ci_low)}, {_pct(s.ci_high)}] ({s.correct}/{s.n})</span>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    tid = f' id="{_e(table_id)}"' if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{tid}>{thead}<tbody>{body}</tbody></table>"


def accuracy_svg(e: Entry) -> str:
    """Horizontal bars: clean, after each attack, robust; one bar per protocol with its 95% interval."""
    rows = [("clean", e.clean)] + [(("after " if e.cascade else "") + n, e.per_attack[n]) for n in e.attack_order]
    rows.append(("robust", e.robust))
    colors = {"single_draw": "#8ecae6", "majority": "#219ebc", "worst_of_m": "#023047"}
    left, width, bar, gap = 150, 420, 9, 10
    height = len(rows) * (3 * bar + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="accuracy-plot" width="{left + width + 30}" '
           f'height="{height}" role="img" aria-label="accuracy per attack and protocol">']
    for k in range(0, 101, 25):
        x = left + width * k / 100
        out.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 30}" stroke="#ddd"/>'
                   f'<text x="{x}" y="{height - 15}" font-size="10" text-anchor="middle">{k}%</text>')
    y = 5
    for label, stats in rows:
        out.append(f'<text x="{left - 6}" y="{y + 1.5 * bar + 4}" font-size="11" text-anchor="end">{_e(label)}</text>')
        for p in PROTOCOLS:
            s = stats[p]
            w = width * s.value
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" fill="{colors[p]}">'
                       f"<title>{_e(label)}, {PROTOCOL_LABELS[p]}: {_pct(s.value)}%</title></rect>")
            lo, hi = left + width * s.ci_low, left + width * s.ci_high
            out.append(f'<line x1="{lo:.1f}" y1="{y + bar / 2}" x2="{hi:.1f}" y2="{y + bar / 2}" stroke="#e76f51"/>')
            y += bar
        y += gap
    legend = " ".join(f'<tspan fill="{colors[p]}">■ {PROTOCOL_LABELS[p]}</tspan>' for p in PROTOCOLS)
    out.append(f'<text x="{left}" y="{height - 2}" font-size="10">{legend} <tspan fill="#e76f51">— 95% CI</tspan>'
               "</text></svg>")
    return "".join(out)


def render_entry(row: dict[str, Any], *, index_url: str, script_url: str) -> str:
    """The page of one entry: badges, paper, results per protocol and attack, protocol, checks, cost, plots."""
    e = Entry.from_dict(row["entry"])
    summary = row.get("examples_summary")
    parts = [f'<p><a id="back" href="{_e(index_url)}">← leaderboard</a></p>',
             f'<h1 id="entry-name">{_e(e.name)} {badges(e)}</h1>']
    if e.unreliable:
        failed = ", ".join(c.name for c in e.checks if c.is_blocking_failure)
        parts.append(f'<p class="warn">Unreliable: a blocking sanity check failed ({_e(failed)}); the robust '
                     "accuracy is likely overestimated.</p>")
    if e.robustbench_violations():
        parts.append(f'<p class="warn">Not admissible on RobustBench: {_e("; ".join(e.robustbench_violations()))}.'
                     "</p>")
    meta = [("Defense", _e(e.defense)), ("Paper", _safe_link(e.link, e.paper_title or "–")),
            ("Authors", _e(e.authors or "–")), ("Venue", _e(e.venue or "–")),
            ("Architecture", _e(e.architecture or "–")),
            ("Extra data", {True: "yes", False: "no", None: "–"}[e.additional_data]),
            ("Dataset", f"{_e(e.dataset)} / {_e(e.split)}"),
            ("Threat model", f"{_e(e.threat_model)}, eps = {_e(eps_string(e.eps, e.threat_model))}")]
    if "submitter" in row:
        meta.append(("Submitted", f"{_e(row['submitter'])}, {_e(row.get('submitted_utc'))}"))
    parts += ["<h2>Entry</h2>", _table(["", ""], [[k, v] for k, v in meta], "meta")]

    res = [["clean"] + [_stat_cell(e.clean[p]) for p in PROTOCOLS]]
    res += [[_e(("after " if e.cascade else "") + n)] + [_stat_cell(e.per_attack[n][p]) for p in PROTOCOLS]
            for n in e.attack_order]
    res.append(["<b>robust (all attacks)</b>"] + [_stat_cell(e.robust[p]) for p in PROTOCOLS])
    parts += ["<h2>Results</h2>",
              f"<p>Ranked by <b>{PROTOCOL_LABELS[e.ranking_protocol]}</b>: robust accuracy "
              f"{_pct(e.robust_accuracy.value)}% (95% CI {_pct(e.robust_accuracy.ci_low)}–"
              f"{_pct(e.robust_accuracy.ci_high)}%, n = {e.n_examples}).</p>",
              _table(["", *[PROTOCOL_LABELS[p] for p in PROTOCOLS]], res, "results"), accuracy_svg(e)]
    extra = []
    if e.external:
        extra.append(f"External (stronger third-party) robust accuracy: {_pct(e.external.robust_accuracy)}% — "
                     f"{_safe_link(e.external.link, e.external.footnote)}")
    if e.reported is not None:
        extra.append(f"Reported in the paper: {_pct(e.reported)}%")
    if e.footnote:
        extra.append(_e(e.footnote))
    parts += [f"<p>{x}</p>" for x in extra]

    attacks = [[_e(a.name), _e(a.norm), _e(f"{a.eps:.6g}"), _e(a.steps if a.steps is not None else "–"), _e(a.eot),
                _e(json.dumps(a.options, sort_keys=True))] for a in e.attacks]
    proto = [("Traits", f"stochastic: {e.stochastic}, adapts at test time: {e.adapts_at_test_time}, "
                        f"batch-dependent: {e.batch_dependent}, gradient: {_e(e.gradient)}"),
             ("Batch size", "not recorded (schema 1)" if e.batch_size is None else
              f"{e.batch_size}" + (" (part of the defense: predictions depend on the batch)"
                                   if e.batch_dependent or e.adapts_at_test_time else "")),
             ("Re-evaluations (M)", str(e.n_reeval)), ("EOT (largest)", str(e.eot)),
             ("Cascade", "yes (later attacks skip broken examples)" if e.cascade else "no"), ("Seed", str(e.seed))]
    parts += ["<h2>Protocol</h2>", _table(["", ""], [[k, v] for k, v in proto], "protocol"),
              _table(["attack", "norm", "eps", "steps", "EOT", "settings"], attacks, "attacks")]
    checks = [[_e(c.name), _e(c.status.upper()), "yes" if c.blocking else "no", _e(c.message)] for c in e.checks]
    parts += ["<h2>Sanity checks</h2>", _table(["check", "status", "blocking", "message"], checks, "checks")]
    if summary:
        outcomes = [[_e(k.replace("broken_by:", "broken by ")), str(v)] for k, v in summary["outcomes"].items()]
        parts += ["<h2>Per-example summary (worst of M)</h2>", _table(["outcome", "examples"], outcomes, "outcomes")]
        pa = [[_e(n), str(s["attacked"]), str(s["broken_worst_of_m"]), str(s["invalid"]),
               _e("–" if s["max_distance"] is None else f"{s['max_distance']:.6g}")]
              for n, s in summary["per_attack"].items()]
        parts.append(_table(["attack", "attacked", "broken", "invalid", "max distance"], pa, "per-attack"))
        if summary.get("unstable_clean"):
            parts.append(f"<p>{summary['unstable_clean']} clean example(s) changed prediction between "
                         "re-evaluations.</p>")
    cost = [("Forward passes per prediction", str(e.forward_passes_per_prediction)),
            ("Forward / backward NFE", f"{e.forward_nfe:,} / {e.backward_nfe:,}"),
            ("GPU-hours", f"{e.gpu_hours:.4g}"), ("Wall time", f"{e.wall_seconds:.1f} s")]
    soft = [(_e(k), _e(v)) for k, v in sorted(e.software.items())]
    prov = [("Config hash", f"<code>{_e(e.config_hash)}</code>"),
            ("Weights sha256", f"<code>{_e(e.weights_sha256 or '–')}</code>"), ("Created", _e(e.created_utc))]
    parts += ["<h2>Cost and provenance</h2>", _table(["", ""], [[k, v] for k, v in cost + prov + soft], "cost")]
    return _page(f"{e.name} — robustkit leaderboard", "\n".join(parts), script_url)


# ------------------------------------------------------------------------------------------- static site

@dataclass(frozen=True)
class SiteResult:
    index: Path
    pages: list[Path]
    skipped: list[str]


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a ``record.json``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise EntryError(f"{root} is not a directory")
    return sorted(p.parent for p in root.rglob("record.json") if p.is_file())


def build_site(src: str | os.PathLike, out: str | os.PathLike, *, strict: bool = False) -> SiteResult:
    """Render the board of every finished run directory under ``src`` into ``out``.

    A run directory may hold ``leaderboard.json`` (an :class:`EntryMetadata` JSON object) with its paper
    metadata. Runs that are unfinished or inconsistent are skipped with a warning (``strict``: raise).
    Writes ``out/index.html``, ``out/board.js`` and ``out/entries/<name>-<hash>.html``.
    """
    runs = find_run_dirs(src)
    if not runs:
        raise EntryError(f"no record.json under {src}: nothing to put on the board")
    rows, skipped = [], []
    for run in runs:
        meta_file = run / "leaderboard.json"
        try:
            meta = EntryMetadata.load(meta_file) if meta_file.is_file() else None
            entry, examples = load_run_entry(run, meta)
        except EntryError as e:
            if strict:
                raise
            log.warning("skipping %s: %s", run, e)
            skipped.append(f"{run}: {e}")
            continue
        slug = f"{entry.name}-{entry.content_hash()[:10]}"
        rows.append({"entry": entry.to_dict(), "slug": slug,
                     "examples_summary": summarize_examples(examples, entry.attack_order, eps=entry.eps)})
    out = Path(out)
    pages = [atomic_write_text(out / "entries" / f"{r['slug']}.html",
                               render_entry(r, index_url="../index.html", script_url="../board.js")) for r in rows]
    atomic_write_text(out / "board.js", BOARD_JS)
    index = atomic_write_text(out / "index.html", render_index(rows, link=lambda r: f"entries/{r['slug']}.html",
                                                              script_url="board.js"))
    return SiteResult(index=index, pages=pages, skipped=skipped)
