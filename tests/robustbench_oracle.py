"""A test oracle: what RobustBench's own leaderboard tools do with a ``model_info`` directory.

Re-expressed (not copied) from RobustBench at commit 78fcc9e (github.com/RobustBench/robustbench):
``robustbench/leaderboard/template.py`` (``generate_leaderboard`` and its Jinja template
``leaderboard.html.j2``) and ``robustbench/utils.py`` (``list_available_models``,
``get_leaderboard_bibtex`` / ``_get_bibtex_entry``, ``get_leaderboard_latex``). Each function reads
the same keys, in the same way (``d[key]`` where RobustBench indexes, so a missing key is a KeyError
here exactly when it is one there), sorts and formats as they do, and returns its rows instead of
printing them. RobustBench's model-zoo lookups (``all_models``) are replaced by the file names found,
as if every exported model were in its zoo.
"""

from __future__ import annotations

import json
from pathlib import Path

ACC_FIELDS = ("external", "autoattack_acc")  # RobustBench's ACC_FIELDS for Linf and L2


def _files(models_folder: Path, dataset: str, threat_model: str) -> list[Path]:
    return sorted((Path(models_folder) / dataset / threat_model).glob("*.json"))


def _first_key(d: dict, keys=ACC_FIELDS) -> float:
    """RobustBench's ``get_key``: the first of ``keys`` present, as a float (None when none is)."""
    for k in keys:
        if k in d:
            return float(d[k])
    return None


def generate_leaderboard(models_folder, dataset: str, threat_model: str) -> list[dict]:
    """The rows of RobustBench's HTML table, best first: what the template reads of each model."""
    models = [json.loads(p.read_text()) for p in _files(models_folder, dataset, threat_model)]
    models.sort(key=_first_key, reverse=True)
    acc_field = ACC_FIELDS[-1]
    rows = []
    for rank, m in enumerate(models, 1):
        rows.append({
            "rank": rank, "link": m["link"], "name": m["name"],
            "footnote": m["footnote"] if "footnote" in m and m["footnote"] is not None else None,
            "clean": f"{m['clean_acc']}%", "aa": f"{m[acc_field]}%",
            "best": f"{m['external'] if m.get('external') else m[acc_field]}%",
            "unreliable": "Unknown" if "unreliable" not in m else bool(m["unreliable"]),
            "extra_data": bool(m["additional_data"]), "architecture": m["architecture"], "venue": m["venue"]})
    return rows


def list_available_models(models_folder, dataset: str, threat_model: str) -> list[str]:
    """RobustBench's markdown table lines (``| rank | model id | [title](link) | clean | robust | arch | venue |``)."""
    dicts = []
    for p in _files(models_folder, dataset, threat_model):
        d = json.loads(p.read_text())
        d["model_name"] = p.stem
        d["venue"] = "Unpublished" if d["venue"] == "" else d["venue"]
        for k in ACC_FIELDS:
            if k in d:
                d[k] = float(d[k]) / 100
        d["clean_acc"] = float(d["clean_acc"]) / 100
        dicts.append(d)
    dicts.sort(key=lambda d: -_first_key(d))
    lines = []
    for i, d in enumerate(dicts):
        lines.append("| {} | {} | [{}]({}) | {:.2%} | {:.2%} | {} | {} |".format(
            i + 1, d["model_name"], d["name"], d["link"], d["clean_acc"], _first_key(d), d["architecture"],
            d["venue"]))
    return lines


def get_leaderboard_bibtex(models_folder, dataset: str, threat_model: str) -> set[str]:
    """RobustBench's BibTeX entries: one per paper, keyed by the name before the first '_'; 'N/A' venues skipped."""
    entries = set()
    for p in _files(models_folder, dataset, threat_model):
        key = p.stem.split("_")[0]
        d = json.loads(p.read_text())
        title, authors, full_venue = d["name"], d["authors"], d["venue"]
        if full_venue == "N/A":
            continue
        venue = full_venue.split(" ")[0].split(",")[0]
        year = d["venue"].split(" ")[-1]
        entries.add(f"@article{{{key},\n\ttitle\t= {{{title}}},\n\tauthor\t= {{{authors.replace(', ', ' and ')}}},\n"
                    f"\tjournal\t= {{{venue}}},\n\tyear\t= {{{year}}}\n}}\n")
    return entries


def get_leaderboard_latex(models_folder, dataset: str, threat_model: str,
                          keys=("clean_acc", "external", "additional_data", "architecture", "venue", "modelzoo_id"),
                          sort_by: str = "external") -> list[str]:
    """RobustBench's LaTeX table rows (``rank & \\citet{key} & ... \\\\``), sorted by ``sort_by``."""
    files = _files(models_folder, dataset, threat_model)
    zoo = {p.stem for p in files}
    rows = []
    for p in files:
        key = p.stem if p.stem.startswith("Standard") else p.stem.split("_")[0]
        d = json.loads(p.read_text())
        text = "\\citet{{{}}}".format(key) if key not in ("Standard", "Standard_R50") else key.replace("_", "\\_")
        for k in keys:
            if k == "external" and "external" not in d:
                d[k] = d["autoattack_acc"]
            if k == "additional_data":
                v = "Y" if d[k] else "N"
            elif k == "architecture":
                v = d[k].replace("WideResNet", "WRN").replace("ResNet", "RN")
            elif k == "modelzoo_id":
                v = p.stem.replace("_", "\\_") if p.stem in zoo else "N/A"
            else:
                v = d[k]
            text += " & {}".format(v)
        rows.append((text + "\\\\", float(d[sort_by])))
    rows.sort(key=lambda r: r[1], reverse=True)
    return ["{} &".format(i + 1) + text for i, (text, _) in enumerate(rows)]
