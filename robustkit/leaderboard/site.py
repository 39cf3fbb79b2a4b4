"""The leaderboard web pages: one sortable table per dataset × threat model, and one page per entry.

The same renderer serves the live server (:mod:`robustkit.leaderboard.server`) and the static site
that ``robustkit leaderboard build DIR --out SITE`` writes from run directories. Pages are plain HTML
with an inline SVG plot and one small script (``board.js``, loaded from the site itself, so a strict
Content-Security-Policy holds) that sorts a table when a column header is clicked. Every string from
an entry is HTML-escaped; links are shown as links only when they are http(s) URLs.

The index has one board per (dataset, threat model, eps). Its ranked table holds the entries that
meet :func:`robustkit.leaderboard.rules.ranking_problems` (the function the server uses too), in
compact columns (rank, model with badges and the score model / classifier of a defense, paper,
clean, robust under its protocol, worst-of-M where stochastic, n with the 95% interval, cost); the
entries it does not rank follow with the reasons, then RobustBench's imported claims. Everything
else (per-protocol and per-attack results, the attack settings, checks, NFE, provenance) is on the
entry page. The page fits a 1280 px window without horizontal scrolling.

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
from .robustbench import ImportedClaim, eps_string, load_claims
from .rules import ROBUSTBENCH_RULES, RankingRules, board_key, ranking_problems

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
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1240px;padding:0 1em;color:#222;box-sizing:border-box}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
table.board{width:100%}
th,td{border:1px solid #ccc;padding:0.3em 0.5em;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.col-model{min-width:9em;overflow-wrap:anywhere} td.col-paper{min-width:7em;overflow-wrap:anywhere}
th button{font:inherit;font-weight:bold;background:none;border:0;cursor:pointer;padding:0;text-align:left}
th[aria-sort=ascending] button::after{content:" \\25B2"} th[aria-sort=descending] button::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sub{display:block;font-size:0.8em;color:#666;white-space:normal}
.badge{display:inline-block;border-radius:3px;padding:0 0.4em;margin:0 0.2em;font-size:0.8em;color:#fff;white-space:nowrap}
.badge.stochastic{background:#6a4c93}.badge.adaptive{background:#1982c4}.badge.unreliable{background:#d62828}
.badge.batch{background:#8a5a00}.badge.imported{background:#555}
.muted{color:#777}.warn{background:#fff3cd;padding:0.5em;border:1px solid #e0c060}
section.board-section{margin-bottom:2em} h3{font-size:1em;margin:0.8em 0 0.2em}
table.unranked td.why{color:#8a2a00;font-size:0.85em;width:30%}
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


def protocol_label(e: Entry) -> str:
    """The attack protocol in a few words, e.g. ``autoattack-standard (100 steps)`` or ``pgd-eot (200
    steps, EOT 20), worst of 10``."""
    parts = []
    for a in e.attacks:
        bits = ([f"{a.steps} steps"] if a.steps else []) + ([f"EOT {a.eot}"] if a.eot > 1 else [])
        parts.append(a.name + (f" ({', '.join(bits)})" if bits else ""))
    text = " + ".join(parts)
    return text + (f", worst of {e.n_reeval}" if e.stochastic else "")


Cell = Callable[[int, Entry, str], tuple[str, Any]]


def _num(v: float | None, sub: str = "") -> tuple[str, float]:
    return _pct(v) + (f'<span class="sub">{sub}</span>' if sub else ""), (-1.0 if v is None else round(100 * v, 6))


def _model_cell(r: int, e: Entry, link: str) -> tuple[str, Any]:
    extra = []
    if e.score_model:  # two purification rows differing only by their score model must not look the same
        extra.append(f"score model: {_e(e.score_model)}")
    if e.classifier:
        extra.append(f"classifier: {_e(e.classifier)}")
    sub = f'<span class="sub">{"<br>".join(extra)}</span>' if extra else ""
    return f'<a class="entry-link" href="{_e(link)}">{_e(e.name)}</a> {badges(e)}{sub}', e.name


def _paper_cell(r: int, e: Entry, link: str) -> tuple[str, Any]:
    venue = f'<span class="sub">{_e(e.venue)}</span>' if e.venue else ""
    if not e.paper_title:
        return '<span class="muted">–</span>' + venue, ""
    return _safe_link(e.link, e.paper_title) + venue, e.paper_title


def _n_cell(r: int, e: Entry, link: str) -> tuple[str, Any]:
    s = e.robust_accuracy
    return f'{e.n_examples:,}<span class="sub">CI {_pct(s.ci_low)}–{_pct(s.ci_high)}</span>', e.n_examples


def _cost_cell(r: int, e: Entry, link: str) -> tuple[str, Any]:
    return (f'{e.forward_passes_per_prediction:,} fwd/pred<span class="sub">{e.gpu_hours:.3g} GPU-h</span>',
            e.forward_passes_per_prediction)


# (header, data-type, cell) of the compact board columns; every other number is on the entry page
BOARD_COLUMNS: list[tuple[str, str, Cell]] = [
    ("Model", "text", _model_cell),
    ("Paper", "text", _paper_cell),
    ("Clean (%)", "number", lambda r, e, link: _num(e.clean_accuracy.value)),
    ("Robust (%)", "number", lambda r, e, link: _num(e.board_accuracy, _e(protocol_label(e)) + (
        " · external" if e.external is not None and e.external.robust_accuracy < e.robust_accuracy.value else ""))),
    ("Worst of M (%)", "number", lambda r, e, link: _num(e.robust["worst_of_m"].value, f"M = {e.n_reeval}")
     if e.stochastic else ("–", -1.0)),
    ("n", "number", _n_cell),
    ("Cost", "number", _cost_cell),
]
RANK_COLUMN: tuple[str, str, Cell] = ("Rank", "number", lambda r, e, link: (str(r), r))


def _board_table(table_id: str, css: str, columns: Sequence[tuple[str, str, Cell]],
                 items: Sequence[tuple[Entry, dict, list]], link: Callable[[dict[str, Any]], str],
                 why: bool = False) -> str:
    head = "".join(f'<th data-type="{t}"><button type="button">{_e(h)}</button></th>' for h, t, _ in columns)
    if why:
        head += '<th data-type="text"><button type="button">Not ranked because</button></th>'
    body = []
    for rank, (e, row, problems) in enumerate(items, 1):
        cells = []
        for header, t, cell in columns:
            text, key = cell(rank, e, link(row))
            cls = ("num " if t == "number" else "") + "col-" + header.split(" ")[0].lower()
            cells.append(f'<td class="{cls}" data-sort="{_e(key)}">{text}</td>')
        if why:
            reasons = "; ".join(p.message for p in problems)
            cells.append(f'<td class="why" data-sort="{_e(reasons)}">{_e(reasons)}</td>')
        codes = " ".join(p.code for p in problems)
        body.append(f'<tr data-name="{_e(e.name)}" data-problems="{_e(codes)}">{"".join(cells)}</tr>')
    return (f'<table class="board {css}" id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _claims_table(table_id: str, claims: Sequence["ImportedClaim"]) -> str:
    head = "".join(f'<th data-type="{t}"><button type="button">{h}</button></th>' for h, t in (
        ("Model", "text"), ("Paper", "text"), ("Clean (%)", "number"), ("AutoAttack (%)", "number"),
        ("Best known (%)", "number"), ("Architecture", "text"), ("Extra data", "text")))
    rows = []
    for c in sorted(claims, key=lambda c: (-c.best_known, c.name)):
        venue = f'<span class="sub">{_e(c.venue)}</span>' if c.venue else ""
        foot = f'<span class="sub">{_e(c.footnote)}</span>' if c.footnote else ""
        rows.append(
            f'<tr data-name="{_e(c.name)}"><td data-sort="{_e(c.name)}">{_e(c.name)} <span class="badge imported" '
            f'title="a claim imported from RobustBench, not re-evaluated by robustkit">imported</span>{foot}</td>'
            f'<td data-sort="{_e(c.title)}">{_safe_link(c.link, c.title or c.name)}{venue}</td>'
            f'<td class="num" data-sort="{c.clean_acc}">{c.clean_acc:.2f}</td>'
            f'<td class="num" data-sort="{c.autoattack_acc}">{c.autoattack_acc:.2f}</td>'
            f'<td class="num" data-sort="{c.best_known}">{c.best_known:.2f}</td>'
            f'<td data-sort="{_e(c.architecture)}">{_e(c.architecture)}</td>'
            f'<td data-sort="{c.additional_data}">{"yes" if c.additional_data else "no"}</td></tr>')
    return (f'<table class="board imported" id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def board_id(key: tuple[str, str, str]) -> str:
    """The HTML id of a board, a valid CSS identifier: ``board-<dataset>-<threat model>-<eps>`` with the
    eps's ``/`` written as ``-`` and ``.`` as ``p`` (``board-cifar10-Linf-8-255``, ``board-digits-L2-0p5``)."""
    return "board-" + "-".join(key).replace("/", "-").replace(".", "p")


def _eps_value(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def render_index(rows: Sequence[dict[str, Any]], *, link: Callable[[dict[str, Any]], str], script_url: str,
                 title: str = "robustkit leaderboard", rules: RankingRules = ROBUSTBENCH_RULES,
                 claims: Sequence["ImportedClaim"] = ()) -> str:
    """The board page: one board per (dataset, threat model, eps), its ranked table (entries that meet
    ``rules``, :func:`~robustkit.leaderboard.rules.ranking_problems`), then the entries it does not rank
    with the reasons, then RobustBench's imported ``claims`` for that board (not re-evaluated).
    ``rows`` hold ``{"entry": Entry dict, ...}``; ``link(row)`` is the entry page URL."""
    boards: dict[tuple[str, str, str], dict[str, list]] = {}
    for row in rows:
        e = Entry.from_dict(row["entry"])
        problems = ranking_problems(e, rules)
        b = boards.setdefault(board_key(e.dataset, e.threat_model, e.eps), {"ranked": [], "unranked": [], "claims": []})
        b["unranked" if problems else "ranked"].append((e, row, problems))
    for c in claims:
        boards.setdefault(c.board, {"ranked": [], "unranked": [], "claims": []})["claims"].append(c)
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p>One board per dataset, threat model and budget. <b>Ranked</b>: {_e(rules_summary(rules))}. "
             "Everything else is listed under the ranking with the reason. Robust accuracy is worst of M "
             "re-classifications for randomized defenses, and a stronger external result where lower. Details "
             "are on each entry's page; click a column header to sort.</p>"]
    if not boards:
        parts.append('<p class="muted" id="empty">No entries yet.</p>')
    for key in sorted(boards, key=lambda k: (k[0], k[1] != "Linf", k[1], _eps_value(k[2]))):
        b, bid = boards[key], board_id(key)
        dataset, tm, eps = key
        out = [f'<section class="board-section" id="{_e(bid)}" data-eps="{_e(eps)}">',
               f"<h2>{_e(dataset)} · {_e(tm)} · eps = {_e(eps)}</h2>"]
        ranked = sorted(b["ranked"], key=lambda it: (-it[0].board_accuracy, it[0].name))
        if ranked:
            out.append(_board_table(f"{bid}-ranked", "ranked", [RANK_COLUMN, *BOARD_COLUMNS], ranked, link))
        else:
            out.append('<p class="muted">No entry meets the ranking rules yet.</p>')
        if b["unranked"]:
            unranked = sorted(b["unranked"], key=lambda it: (-it[0].board_accuracy, it[0].name))
            out += [f'<h3 id="{_e(bid)}-unranked-title">Not ranked ({len(unranked)})</h3>',
                    _board_table(f"{bid}-unranked", "unranked", BOARD_COLUMNS, unranked, link, why=True)]
        if b["claims"]:
            out += [f"<h3>RobustBench's claims ({len(b['claims'])}): imported, not re-evaluated by robustkit</h3>",
                    _claims_table(f"{bid}-imported", b["claims"])]
        parts.append("\n".join(out) + "</section>")
    return _page(title, "\n".join(parts), script_url)


def rules_summary(rules: RankingRules = ROBUSTBENCH_RULES) -> str:
    return (f"the full test set (or a declared standard subset), AutoAttack at its full budget (or, for "
            f"randomized, non-differentiable or test-time-adapting defenses, {'/'.join(rules.adaptive_attacks)} "
            f"with >= {rules.adaptive_steps} steps and EOT >= {rules.adaptive_eot}), sanity checks run and none "
            "failed")


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


def render_entry(row: dict[str, Any], *, index_url: str, script_url: str,
                 rules: RankingRules = ROBUSTBENCH_RULES) -> str:
    """The page of one entry: ranking status, badges, paper, results per protocol and attack, protocol,
    checks, cost, plots."""
    e = Entry.from_dict(row["entry"])
    dataset, tm, eps = board_key(e.dataset, e.threat_model, e.eps)
    summary = row.get("examples_summary")
    parts = [f'<p><a id="back" href="{_e(index_url)}">← leaderboard</a></p>',
             f'<h1 id="entry-name">{_e(e.name)} {badges(e)}</h1>']
    if e.unreliable:
        failed = ", ".join(c.name for c in e.checks if c.is_blocking_failure)
        parts.append(f'<p class="warn">Unreliable: a blocking sanity check failed ({_e(failed)}); the robust '
                     "accuracy is likely overestimated.</p>")
    problems = ranking_problems(e, rules)
    board = f"{dataset} · {tm} · eps = {eps}"
    if problems:
        parts.append(f'<p class="warn" id="ranking">Not ranked on the board {_e(board)}: '
                     f'{_e("; ".join(p.message for p in problems))}.</p>')
    else:
        parts.append(f'<p id="ranking">Ranked on the board {_e(board)}.</p>')
    if e.robustbench_violations():
        parts.append(f'<p class="warn">Not admissible on RobustBench: {_e("; ".join(e.robustbench_violations()))}.'
                     "</p>")
    meta = [("Defense", _e(e.defense)), ("Paper", _safe_link(e.link, e.paper_title or "–")),
            ("Authors", _e(e.authors or "–")), ("Venue", _e(e.venue or "–")),
            ("Architecture", _e(e.architecture or "–"))]
    meta += [(label, _e(v)) for label, v in (("Classifier", e.classifier), ("Score model", e.score_model)) if v]
    meta += [("Extra data", {True: "yes", False: "no", None: "–"}[e.additional_data]),
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
    prov = [("Identity", f"<code>{_e(e.identity())}</code>"),
            ("Defense digest", f"<code>{_e(e.defense_digest or '– (entry schema < 3)')}</code>"),
            ("Config hash", f"<code>{_e(e.config_hash)}</code>"),
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


CLAIMS_DIR = "robustbench_claims"  # where ``robustkit leaderboard import`` puts RobustBench's files under DIR


def build_site(src: str | os.PathLike, out: str | os.PathLike, *, strict: bool = False,
               rules: RankingRules = ROBUSTBENCH_RULES) -> SiteResult:
    """Render the board of every finished run directory under ``src`` into ``out``.

    A run directory may hold ``leaderboard.json`` (an :class:`EntryMetadata` JSON object) with its paper
    metadata. Runs that are unfinished or inconsistent are skipped with a warning (``strict``: raise).
    RobustBench claims imported into ``src/robustbench_claims/`` (``robustkit leaderboard import``) are
    shown on their boards, marked as not re-evaluated. ``rules`` decide what is ranked. Writes
    ``out/index.html``, ``out/board.js`` and ``out/entries/<name>-<hash>.html``.
    """
    claims = load_claims(Path(src) / CLAIMS_DIR) if (Path(src) / CLAIMS_DIR).is_dir() else []
    runs = find_run_dirs(src)
    if not runs and not claims:
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
                               render_entry(r, index_url="../index.html", script_url="../board.js", rules=rules))
             for r in rows]
    atomic_write_text(out / "board.js", BOARD_JS)
    index = atomic_write_text(out / "index.html", render_index(rows, link=lambda r: f"entries/{r['slug']}.html",
                                                              script_url="board.js", rules=rules, claims=claims))
    return SiteResult(index=index, pages=pages, skipped=skipped)
