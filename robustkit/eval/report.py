"""``write_report``: a finished benchmark run directory → a Markdown report with PNG plots.

The report is built only from what the run directory holds (``record.json``, ``manifest.json`` and the
shards), so it can be regenerated at any time, on any machine, without the model. It contains:

* ``report.md``: the headline (with the ``unreliable`` flag first when a blocking check failed),
  clean and robust accuracy per protocol with 95% Wilson intervals, accuracy after each attack, the
  full protocol of every attack, the sanity checks, the cost, software versions and the config hash;
* ``accuracy_per_attack.png``: accuracy after each attack in order, with the intervals as error bars;
* ``accuracy_vs_eps.png``: robust (worst-of-M) accuracy against eps, when several runs of the same
  defense, dataset and threat model at different eps are given;
* ``examples.png``: clean image, adversarial image and perturbation for the first examples of the first
  shard, with the true class, the clean and adversarial predictions (class names where the dataset has
  them) and, where there is no adversarial image, the reason in words ("misclassified clean: not
  attacked", "not broken"). Clean images are not stored in a run directory; they are reloaded from the dataset named in
  the record and used only if they reproduce every recorded perturbation distance (so a run made
  on custom ``data=`` tensors shows its adversarial images alone rather than wrong clean ones).

Example (a few seconds on a CPU)::

    >>> import tempfile, robustkit
    >>> from pathlib import Path
    >>> from robustkit.eval.report import write_report
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> rec = robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], n_examples=16,
    ...                           batch_size=16, attack_options={"pgd": {"steps": 2}}, checks=False,
    ...                           run_dir=Path(tmp.name) / "run", progress=False)
    >>> md = write_report(Path(tmp.name) / "run")
    >>> md.name, md.parent.name, sorted(p.name for p in md.parent.glob("*.png"))
    ('report.md', 'report', ['accuracy_per_attack.png', 'examples.png'])
    >>> f"{100 * rec.clean['worst_of_m'].value:.2f}%" in md.read_text()
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import textwrap
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import InputError, RobustkitError
from .record import PROTOCOLS, AccuracyStat, BenchmarkRecord, RecordError, load_run_record
from .runner import RunConfigError, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["RunNotFinishedError", "write_report", "load_run", "RunData"]

N_EXAMPLES_SHOWN = 8
PROTOCOL_LABELS = {"single_draw": "single draw", "majority": "majority of M", "worst_of_m": "worst of M"}
# How well a recorded perturbation distance must be reproduced by (x_adv - reloaded clean x): the
# distances were computed in float32 from the same tensors, so anything beyond rounding means other images.
_DIST_ATOL = 1e-5
_DIST_RTOL = 1e-4


class RunNotFinishedError(RobustkitError, FileNotFoundError):
    """The run directory has no ``record.json`` yet: some shards are still missing or not aggregated."""


@dataclass
class RunData:
    """One run directory as read by :func:`load_run`: the record, the manifest and the first shard.

    Attributes:
        path: the run directory.
        record: its :class:`~robustkit.eval.record.BenchmarkRecord`.
        manifest: the parsed ``manifest.json`` (config, shard ranges).
        first_shard_records: the per-example JSON records of shard 0, in shard order.
        first_shard_x_adv: x_adv per attack name for shard 0 (``[n_shard, C, H, W]``), empty when the
            tensor file is missing.
    """

    path: Path
    record: BenchmarkRecord
    manifest: dict[str, Any]
    first_shard_records: list[dict[str, Any]]
    first_shard_x_adv: dict[str, torch.Tensor]

    def x_adv_items(self) -> list[tuple[str, torch.Tensor]]:
        """``(attack name, x_adv of shard 0)`` in attack order, for the attacks whose images are stored."""
        return [(a, self.first_shard_x_adv[a]) for a in self.record.attack_names() if a in self.first_shard_x_adv]


# ------------------------------------------------------------------------------------------------ loading

def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a finished run directory.

    Raises:
        RunConfigError: ``run_dir`` does not exist or is not a robustkit run directory.
        RunNotFinishedError: there is no ``record.json`` yet (with the number of finished shards).
        RecordError: ``record.json`` or a shard does not match the schema, or the record's accuracies are
            not those its per-example results give (:func:`~robustkit.eval.record.load_run_record`): the
            report refuses to render it.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunConfigError(f"{path} is not a directory; expected a robustkit run directory")
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise RunConfigError(f"{path} has no manifest.json; not a robustkit run directory")
    try:
        manifest = json.loads(manifest_file.read_text())
        shards = [(int(a), int(b)) for a, b in manifest["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunConfigError(f"{manifest_file} is not a valid run manifest ({e})") from e
    record_file = path / "record.json"
    if not record_file.exists():
        done = sum((path / "shards" / f"shard_{i:05d}.jsonl").exists() for i in range(len(shards)))
        raise RunNotFinishedError(f"{path}: no record.json ({done}/{len(shards)} shards finished): run not "
                                  "finished — re-run robustkit bench with the same --run-dir to resume")
    record = load_run_record(path)  # refuses a record its per-example results do not give
    if not shards:
        raise RecordError(f"{manifest_file} lists no shards")
    lines_file = path / "shards" / "shard_00000.jsonl"
    if not lines_file.exists():
        raise RecordError(f"{path} has record.json but no {lines_file.name}; the run directory is incomplete")
    try:
        lines = [json.loads(s) for s in lines_file.read_text().splitlines() if s.strip()]
    except json.JSONDecodeError as e:
        raise RecordError(f"{lines_file} is not valid JSON lines ({e})") from e
    expected = shards[0][1] - shards[0][0]
    if len(lines) != expected:
        raise RecordError(f"{lines_file} has {len(lines)} examples, the manifest says {expected}")
    for r in lines:
        if not isinstance(r, dict) or not {"index", "label", "clean", "attacks"} <= set(r):
            raise RecordError(f"{lines_file}: per-example record without index/label/clean/attacks: {r!r:.200}")
    x_adv: dict[str, torch.Tensor] = {}
    tensor_file = path / "shards" / "shard_00000.pt"
    if tensor_file.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            x_adv = load_file(str(tensor_file))
        except (SafetensorError, OSError) as e:
            raise RecordError(f"{tensor_file} is not a readable safetensors file ({e})") from e
    return RunData(path, record, manifest, lines, x_adv)


def _check_comparable(runs: list[RunData]) -> None:
    """Raise InputError unless the runs differ only in eps (and possibly n / seed / hardware)."""
    ref = runs[0].record

    def key(r: BenchmarkRecord) -> dict[str, Any]:
        return {"defense": r.defense, "weights": r.defense_config.get("weights_sha256"), "dataset": r.dataset,
                "split": r.split, "threat_model": r.threat_model, "attacks": list(r.per_attack),
                "cascade": r.cascade}

    k0 = key(ref)
    for run in runs[1:]:
        k = key(run.record)
        diff = [f"{name} ({k0[name]!r} vs {k[name]!r})" for name in k0 if k[name] != k0[name]]
        if diff:
            raise InputError(f"runs {runs[0].path} and {run.path} are not comparable for an accuracy-vs-eps "
                             f"plot: they differ in {'; '.join(diff)}")
    eps = [r.record.eps for r in runs]
    if len(set(eps)) != len(eps):
        raise InputError(f"runs for an accuracy-vs-eps report must have distinct eps, got {eps}")


# ----------------------------------------------------------------------------------------------- formatting

def _pct(s: AccuracyStat) -> str:
    return f"{100 * s.value:.2f}% [{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]"


def _fmt_eps(eps: float) -> str:
    """``0.0313725…`` → ``0.03137 (8/255)``: show the /255 fraction when eps is one."""
    frac = Fraction(eps).limit_denominator(255)
    text = f"{eps:.4g}"
    if frac.denominator == 255 and math.isclose(float(frac), eps, rel_tol=1e-6):
        text += f" ({frac.numerator}/255)"
    return text


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.6g}"
    elif isinstance(v, (dict, list)):
        v = json.dumps(v, sort_keys=True)
    return str(v).replace("\n", " ").replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _worst(draws: list[bool]) -> bool:
    return bool(draws) and all(draws)


# ------------------------------------------------------------------------------------------------ figures

def _new_figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # the CLI turns ImportError into one line
        raise ImportError("robustkit report needs matplotlib: pip install matplotlib") from e
    # A Figure with its own Agg canvas: no pyplot, so the caller's backend and global state stay untouched.
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _yerr(stats: list[AccuracyStat]) -> list[list[float]]:
    # asymmetric Wilson interval as matplotlib error bars, in percent
    return [[100 * (s.value - s.ci_low) for s in stats], [100 * (s.ci_high - s.value) for s in stats]]


def _protocols_to_plot(rec: BenchmarkRecord) -> list[str]:
    # with one draw per example the three protocols coincide by definition; plot them once
    return ["worst_of_m"] if rec.n_reeval == 1 else list(PROTOCOLS)


def _plot_per_attack(rec: BenchmarkRecord, path: Path) -> Path:
    labels = ["clean"] + [("after " if rec.cascade else "") + a for a in rec.attack_names()]
    rows = [rec.clean] + [rec.per_attack[a] for a in rec.attack_names()]
    if not rec.cascade:  # standalone per-attack numbers: the combined worst case is a separate bar
        labels.append("all attacks")
        rows.append(rec.robust)
    protos = _protocols_to_plot(rec)
    fig = _new_figure(max(4.0, 1.3 * len(labels) + 1.5), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(protos)
    for j, p in enumerate(protos):
        stats = [r[p] for r in rows]
        xs = [i + (j - (len(protos) - 1) / 2) * width for i in range(len(labels))]
        name = "all protocols (1 draw)" if len(protos) == 1 else PROTOCOL_LABELS[p]
        ax.bar(xs, [100 * s.value for s in stats], width, yerr=_yerr(stats), capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%), 95% CI")
    # one line per part, wrapped to the figure's width (about 13 characters of 9-point text per inch), so a
    # narrow figure (two bars) never clips its title
    chars = int(13 * max(4.0, 1.3 * len(labels) + 1.5))
    ax.set_title("\n".join(textwrap.fill(t, chars) for t in (
        rec.defense, f"{rec.dataset} {rec.threat_model} eps={_fmt_eps(rec.eps)} (n={rec.n_examples})")), fontsize=9)
    fig.legend(loc="outside lower center", ncol=len(protos), fontsize=8)  # below the axes: never over a bar
    return _save(fig, path)


def _plot_vs_eps(runs: list[RunData], path: Path) -> Path:
    recs = sorted((r.record for r in runs), key=lambda r: r.eps)
    eps = [r.eps for r in recs]
    fig = _new_figure(5.0, 3.6)
    ax = fig.add_subplot()
    robust = [r.robust["worst_of_m"] for r in recs]
    clean = [r.clean["worst_of_m"] for r in recs]
    ax.errorbar(eps, [100 * s.value for s in robust], yerr=_yerr(robust), marker="o", capsize=3,
                label="robust (worst of M)")
    ax.errorbar(eps, [100 * s.value for s in clean], yerr=_yerr(clean), marker="s", capsize=3, linestyle="--",
                label="clean (worst of M)")
    for r, s in zip(recs, robust):
        if r.unreliable:
            ax.annotate("unreliable", (r.eps, 100 * s.value), fontsize=7, color="red",
                        xytext=(4, 4), textcoords="offset points")
    ax.set_ylim(0, 105)
    ax.set_xlabel(f"eps ({recs[0].threat_model})")
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_title(f"{recs[0].defense}, {recs[0].dataset}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _load_clean(run: RunData, data_dir: str | os.PathLike | None) -> tuple[torch.Tensor | None, str]:
    """Clean images of shard 0 from the dataset, verified against the run; (None, reason) when impossible."""
    from ..attacks import perturbation_norm
    from ..data import load_dataset

    rec = run.record
    start, stop = run.manifest["shards"][0]
    indices = run.manifest.get("config", {}).get("indices")
    if not isinstance(indices, list) or len(indices) < stop:
        return None, "the manifest does not list the example indices"
    try:
        x, y = load_dataset(rec.dataset, split=rec.split, indices=indices[start:stop], data_dir=data_dir)
    except (RobustkitError, OSError) as e:
        return None, f"dataset {rec.dataset!r} could not be loaded ({e})"
    lines = run.first_shard_records
    if y.tolist() != [int(r["label"]) for r in lines]:
        return None, f"the labels of dataset {rec.dataset!r} differ from those of the run (custom data?)"
    for name, xa in run.x_adv_items():
        if xa.shape != x.shape:
            return None, f"image shape {tuple(x.shape)} of the dataset differs from the run's {tuple(xa.shape)}"
        dist = perturbation_norm(xa.float(), x, rec.threat_model)
        for i, r in enumerate(lines):
            a = r["attacks"].get(name)
            want = 0.0 if a is None else float(a["distance"])  # skipped examples keep x_adv = x
            if not math.isclose(float(dist[i]), want, rel_tol=_DIST_RTOL, abs_tol=_DIST_ATOL):
                return None, (f"the dataset images do not reproduce the recorded perturbation distances "
                              f"(example {r['index']}, {name}: {float(dist[i]):.6g} vs {want:.6g}); custom data?")
    return x, ""


def _show(ax, img: torch.Tensor, **kwargs: Any) -> None:
    c = img.shape[0]
    if c == 3:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest", **kwargs)
    else:  # 1 channel (or an unusual count: its mean) as grayscale
        ax.imshow(img.mean(0).numpy(), cmap=kwargs.pop("cmap", "gray"), vmin=kwargs.pop("vmin", 0.0),
                  vmax=kwargs.pop("vmax", 1.0), interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _class_name(dataset: str, k: int) -> str:
    """Class ``k`` by name where the dataset has names (CIFAR-10 and its corruptions), else its number."""
    from ..data.cifar10 import CLASSES

    names = CLASSES if dataset.split(":")[0].replace("-", "") in ("cifar10", "cifar10c") else None
    return names[k] if names is not None and 0 <= k < len(names) else str(k)


def _blank(ax, text: str, color: str, aspect: float) -> None:
    """An image cell that says in words why it holds no image (instead of a blank or mid-gray square)."""
    ax.set_box_aspect(aspect)  # the images' height / width, so the grid stays aligned
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linestyle(":")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, color=color, transform=ax.transAxes)


def _plot_examples(run: RunData, clean: torch.Tensor | None, path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Grid: rows clean / adversarial / perturbation, one column per example; returns what each shows.

    Each column is titled with the example's index and true class (by name where the dataset has names);
    the clean image is labelled with its prediction, the adversarial image with the attack and the class it
    is now given (from the run's ``pred:*`` tensors: the first wrong draw when a stochastic model erred in
    some draw, as the worst-of-M status does; runs made before they were stored show no predictions). An example with no adversarial image (misclassified clean, so never attacked, or an
    attack that returned the clean image) says so in words instead of showing an empty perturbation.
    """
    rec = run.record
    attacks = rec.attack_names()
    lines = run.first_shard_records[:N_EXAMPLES_SHOWN]
    preds = run.first_shard_x_adv  # the tensor file holds x_adv per attack and "pred:<attack>" / "pred:clean"

    def pred_of(key: str, i: int, label: int) -> int | None:
        # the first draw that is wrong, if any (the worst-of-M protocol that names the status), else draw 0
        t = preds.get(f"pred:{key}")
        if t is None or i >= t.shape[0] or int(t[i, 0]) < 0:
            return None
        return next((int(p) for p in t[i] if int(p) != label), int(t[i, 0]))

    shown = []
    for i, r in enumerate(lines):
        clean_ok = _worst(r["clean"])
        # the attack that broke it (first failing one, under the strictest protocol), else the last attack
        broke = next((a for a in attacks if r["attacks"].get(a) is not None
                      and not _worst(r["attacks"][a]["correct"])), None)
        robust = clean_ok and broke is None
        attack = broke or attacks[-1]
        status = "robust" if robust else ("misclassified clean" if not clean_ok else f"broken by {attack}")
        result = r["attacks"].get(attack)
        shown.append({"index": r["index"], "label": r["label"], "attack": attack, "status": status,
                      "x_adv": run.first_shard_x_adv[attack][i].float(),
                      "has_adv": result is not None and float(result["distance"]) > 0,
                      "pred_clean": pred_of("clean", i, r["label"]),
                      "pred_adv": pred_of(attack, i, r["label"]) if result else None})
    name = functools.partial(_class_name, rec.dataset)
    rows = 3 if clean is not None else 1
    cols = len(shown)
    fig = _new_figure(1.35 * cols + 0.9, 1.75 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for j, s in enumerate(shown):
        top = axes[0][j]
        adv_ax = axes[1][j] if clean is not None else top
        green_or_red = "tab:green" if s["status"] == "robust" else "tab:red"
        if clean is not None:
            _show(top, clean[j])
            if s["pred_clean"] is not None:
                top.set_xlabel(f"pred: {name(s['pred_clean'])}", fontsize=7,
                               color="tab:green" if s["pred_clean"] == s["label"] else "tab:red")
        if not s["has_adv"]:
            why = "misclassified clean:\nnot attacked" if s["status"] == "misclassified clean" else "not broken:\nno adversarial\nimage"
            aspect = s["x_adv"].shape[1] / s["x_adv"].shape[2]
            _blank(adv_ax, why, green_or_red, aspect)
            if clean is not None:
                _blank(axes[2][j], "no perturbation", "gray", aspect)
        else:
            _show(adv_ax, s["x_adv"])
            if s["pred_adv"] is not None:
                broken = s["pred_adv"] != s["label"]
                adv_ax.set_xlabel(f"{s['attack']} → {name(s['pred_adv'])}" if broken
                                  else f"not broken: {name(s['pred_adv'])}", fontsize=7,
                                  color="tab:red" if broken else "tab:green")
            if clean is not None:
                delta = s["x_adv"] - clean[j]
                scale = rec.eps if rec.threat_model == "Linf" else max(float(delta.abs().max()), 1e-12)
                if delta.shape[0] == 3:  # amplified to fill [0, 1] around mid-gray
                    _show(axes[2][j], (delta / (2 * scale) + 0.5).clamp(0, 1))
                else:
                    _show(axes[2][j], delta, cmap="seismic", vmin=-scale, vmax=scale)
        top.set_title(f"#{s['index']} true: {name(s['label'])}\n{s['status']}", fontsize=7, color=green_or_red)
    scale_text = f"±{rec.eps:.3g}" if rec.threat_model == "Linf" else "±max, per image"
    names = (["clean", "adversarial", f"perturbation\n({scale_text})"] if clean is not None
             else ["adversarial"])
    for k, name in enumerate(names):
        axes[k][0].set_ylabel(name, fontsize=8)
    return _save(fig, path), shown


# ------------------------------------------------------------------------------------------------ markdown

def _markdown(main: RunData, runs: list[RunData], eps_plot: bool, examples: list[dict[str, Any]] | None,
              clean_note: str, examples_note: str) -> str:
    rec = main.record
    md: list[str] = [f"# Robustness report: {rec.defense} on {rec.dataset}/{rec.split}, "
                     f"{rec.threat_model} eps = {_fmt_eps(rec.eps)}", ""]
    if rec.unreliable:
        failed = [c.name for c in rec.checks if c.is_blocking_failure]
        md += [f"> **UNRELIABLE: a blocking sanity check failed ({', '.join(failed)}).** The accuracies below "
               "are not a trustworthy measure of robustness; see *Sanity checks*.", ""]
    else:
        md += ["Reliable: no blocking sanity check failed.", ""]
    t = rec.traits
    headline = rec.robust["worst_of_m"]
    md += [f"**Robust accuracy (worst of M, all attacks): {_pct(headline)}**, "
           f"clean accuracy {_pct(rec.clean['worst_of_m'])}, n = {rec.n_examples}.", "",
           f"- defense: `{rec.defense}` (stochastic={t.get('stochastic')}, "
           f"adapts_at_test_time={t.get('adapts_at_test_time')}, "
           f"batch_dependent={t.get('batch_dependent', False)}, gradient={t.get('gradient')}, "
           f"forward_passes={t.get('forward_passes')})",
           f"- threat model: {rec.threat_model}, eps = {_fmt_eps(rec.eps)}",
           f"- examples: {rec.n_examples} from {rec.dataset}/{rec.split}; seed {rec.seed}; "
           f"{rec.n_reeval} draw(s) per prediction; cascade = {rec.cascade}",
           f"- config hash: `{rec.config_hash}`",
           f"- created: {rec.created_utc} (record schema {rec.schema_version})", ""]

    md += ["## Accuracy", "",
           "Percent with the 95% Wilson interval. *Worst of M*: an example counts as correct only if every one "
           f"of the {rec.n_reeval} draw(s) is correct; it is the number to quote for stochastic defenses.", ""]
    header = [""] + [PROTOCOL_LABELS[p] for p in PROTOCOLS]
    md += _table(header, [["clean"] + [_pct(rec.clean[p]) for p in PROTOCOLS],
                          ["robust (all attacks)"] + [_pct(rec.robust[p]) for p in PROTOCOLS]])
    md += ["", "### Per attack", "",
           ("Cascade: each attack only sees the examples that survived the previous ones, so the numbers are "
            "cumulative." if rec.cascade else "Every attack on every example: standalone numbers."), ""]
    rows = [["clean"] + [_pct(rec.clean[p]) for p in PROTOCOLS]]
    rows += [[("after " if rec.cascade else "") + a] + [_pct(s[p]) for p in PROTOCOLS]
             for a, s in ((a, rec.per_attack[a]) for a in rec.attack_names())]
    md += _table(header, rows)
    md += ["", "![accuracy per attack](accuracy_per_attack.png)", ""]

    md += ["## Accuracy vs eps", ""]
    if eps_plot:
        ordered = sorted(runs, key=lambda r: r.record.eps)
        md += _table(["eps", "n", "clean (worst of M)", "robust (worst of M)", "reliable", "run"],
                     [[_fmt_eps(r.record.eps), r.record.n_examples, _pct(r.record.clean["worst_of_m"]),
                       _pct(r.record.robust["worst_of_m"]), "no (UNRELIABLE)" if r.record.unreliable else "yes",
                       r.path.name] for r in ordered])
        md += ["", "![robust accuracy vs eps](accuracy_vs_eps.png)", ""]
    else:
        md += ["Skipped: one run given. Pass several run directories of the same defense, dataset and threat "
               "model at different eps (`robustkit report RUN_A RUN_B ...`) to plot robust accuracy against eps.",
               ""]

    md += ["## Examples", ""]
    if examples is None:
        md += [f"Skipped: {examples_note}", ""]
    else:
        md += [f"The first {len(examples)} examples of the first shard. For each, the adversarial image of the "
               "attack that broke it (strictest protocol), or of the last attack when it stayed robust. "
               "Purified images are not stored in run directories and are not shown.", ""]
        if clean_note:
            md += [f"Clean images not shown: {clean_note}", ""]
        md += ["![examples](examples.png)", ""]
        md += _table(["example", "label", "attack shown", "outcome"],
                     [[s["index"], s["label"], s["attack"], s["status"]] for s in examples])
        md += [""]

    md += ["## Attack protocols", ""]
    by_name = {a.get("name", f"#{i}"): a for i, a in enumerate(rec.attacks)}
    names = rec.attack_names() + [n for n in by_name if n not in rec.per_attack]
    keys = sorted({k for a in rec.attacks for k in a if k != "name"})
    if keys:
        md += _table(["parameter"] + names, [[k] + [by_name[n].get(k, "–") if n in by_name else "–" for n in names]
                                            for k in keys])
    missing = [n for n in names if n not in by_name]
    if missing:
        md += ["", f"No protocol recorded for: {', '.join(missing)} (the record keeps the protocol of the attacks "
               "that ran on the first shard; in a cascade an attack is skipped when every example is already "
               "broken)."]
    md += [""]

    md += ["## Sanity checks", ""]
    if {c.name for c in rec.checks} <= {"adversarial_validity"}:
        md += ["The sanity checks were **not run** (benchmark with `checks=False`); only the validity of the "
               "adversarial examples was checked.", ""]
    md += _table(["check", "status", "blocking", "message"],
                 [[c.name, c.status.upper() if c.status in ("fail", "warn") else c.status,
                   "yes" if c.blocking else "no", c.message] for c in rec.checks])
    md += [""]

    md += ["## Cost", ""]
    c = rec.cost
    known = [("forward_passes", "forward passes (example-passes)"), ("backward_passes", "backward passes"),
             ("forward_passes_per_prediction", "network evaluations per prediction"),
             ("forward_nfe", "forward NFE"), ("backward_nfe", "backward NFE"),
             ("attack_seconds", "attack seconds"), ("checks_seconds", "checks seconds"),
             ("wall_seconds", "wall seconds"), ("device", "device"), ("gpu_hours", "GPU-hours")]
    rows = [[label, c.get(k, "–")] for k, label in known]
    rows += [[k, v] for k, v in sorted(c.items()) if k not in dict(known)]
    md += _table(["quantity", "value"], rows)
    md += ["", "## Software", ""]
    md += _table(["package", "version"], sorted(rec.software.items()))
    md += ["", "## Reproducibility", "",
           f"- run directory: `{main.path}`",
           f"- config hash (sha256 of the canonical run config): `{rec.config_hash}`",
           f"- weights sha256: `{rec.defense_config.get('weights_sha256', '–')}`", ""]
    return "\n".join(md)


# ----------------------------------------------------------------------------------------------- entry point

def write_report(run_dir: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                 *, data_dir: str | os.PathLike | None = None) -> Path:
    """Write ``report.md`` and its PNG plots for one run directory (or several, for accuracy vs eps).

    Args:
        run_dir: a finished run directory, or a list of them: same defense (and weights), dataset,
            split, threat model and attacks at distinct eps. The report details the first one and plots
            robust accuracy against eps over all.
        out_dir: where to write (created if needed); default ``<first run_dir>/report``.
        data_dir: dataset directory used to reload the clean images (default: ``$ROBUSTKIT_DATA``).

    Returns:
        The path of ``report.md``; the images sit next to it and are linked relatively.

    Raises:
        RunNotFinishedError: a run has no ``record.json`` yet (the message says how to resume).
        RunConfigError: a path is not a run directory.
        RecordError: a record or shard does not match the schema, or a record disagrees with its
            per-example results (nothing is written then).
        InputError: the runs are not comparable (different defense, dataset, ...) or share an eps.
    """
    if isinstance(run_dir, (str, os.PathLike)):
        dirs = [run_dir]
    else:
        dirs = list(run_dir)
        if not dirs:
            raise InputError("write_report needs at least one run directory")
    runs = [load_run(d) for d in dirs]
    if len(runs) > 1:
        _check_comparable(runs)
    main = runs[0]
    out = Path(out_dir) if out_dir is not None else main.path / "report"
    out.mkdir(parents=True, exist_ok=True)

    _plot_per_attack(main.record, out / "accuracy_per_attack.png")
    eps_plot = len(runs) > 1
    if eps_plot:
        _plot_vs_eps(runs, out / "accuracy_vs_eps.png")

    examples, clean_note, examples_note = None, "", ""
    missing = [a for a in main.record.per_attack if a not in main.first_shard_x_adv]
    if not main.record.per_attack:
        examples_note = "the run has no attacks."
    elif missing:
        examples_note = f"the first shard holds no adversarial images for {', '.join(missing)}."
    else:
        clean, clean_note = _load_clean(main, data_dir)
        if clean is None:
            log.warning("report of %s: clean images not shown: %s", main.path, clean_note)
        _, examples = _plot_examples(main, clean, out / "examples.png")
    if examples is None:
        log.warning("report of %s: examples plot skipped: %s", main.path, examples_note)

    return atomic_write_text(out / "report.md", _markdown(main, runs, eps_plot, examples, clean_note,
                                                          examples_note) + "\n")
