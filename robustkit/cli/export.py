"""``robustkit export robustbench RUN_DIR --out DIR``: RobustBench ``model_info`` JSON of a finished run.

    robustkit export robustbench runs/wrn --out model_info --metadata paper.json --name-suffix WRN-28-10

writes ``DIR/<dataset>/<threat_model>/<Name>.json`` and prints its path. What a record cannot know
(paper title, authors, venue, link, extra data, the paper's reported number, a stronger external
result) comes from ``--metadata FILE`` (a JSON object with the fields of
:class:`robustkit.leaderboard.EntryMetadata`, accuracies as fractions) and from the options below,
which override the file (accuracies there in percent, as RobustBench writes them). Every RobustBench
key is written, with RobustBench's placeholders where a value is unknown.

A run that is not a standard RobustBench evaluation (a randomized, adapting or batch-dependent
defense; a subset of the test set; AutoAttack below its full budget; sanity checks skipped or
failed: :func:`robustkit.leaderboard.rules.ranking_problems`) is refused with the reasons, unless
``--allow-nonstandard``, which exports it with those reasons in the footnote.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..leaderboard.entry import EntryMetadata, ExternalResult


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a percentage like 59.53, got {text!r}") from e
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}")
    return v / 100


def add_metadata_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paper metadata (override --metadata)")
    g.add_argument("--metadata", default=None, metavar="FILE", help="JSON object of EntryMetadata fields")
    g.add_argument("--name", default=None, help="model name (default: AuthorYearFirstWord[_suffix] from the "
                   "authors, year and title as RobustBench forms it, else the defense's name, which a registered "
                   "name like resnet20.cifar10 is not: RobustBench names have letters, digits, '_' and '-' only)")
    g.add_argument("--name-suffix", default=None, help="suffix of a formed name, e.g. the architecture WRN-28-10")
    g.add_argument("--paper-title", default=None)
    g.add_argument("--authors", default=None, help="comma-separated, first author first")
    g.add_argument("--venue", default=None, help="e.g. 'ICML 2022'")
    g.add_argument("--year", type=int, default=None, help="publication year (default: the year in --venue)")
    g.add_argument("--link", default=None, help="paper URL")
    g.add_argument("--architecture", default=None, help="default: the classifier's registered architecture")
    g.add_argument("--additional-data", default=None, action=argparse.BooleanOptionalAction,
                   help="trained with data beyond the dataset's training set")
    g.add_argument("--reported", type=_percent, default=None, metavar="PCT", help="the paper's robust accuracy (%%)")
    g.add_argument("--external", type=_percent, default=None, metavar="PCT",
                   help="a stronger third-party robust accuracy (%%); needs --external-footnote")
    g.add_argument("--external-footnote", default=None, help="who measured --external, and how")
    g.add_argument("--footnote", default=None)


def metadata_from_args(args: argparse.Namespace) -> EntryMetadata:
    meta = EntryMetadata.load(args.metadata) if args.metadata else EntryMetadata()
    if (args.external is None) != (args.external_footnote is None):
        raise InputError("--external and --external-footnote go together: a stronger result needs its source")
    external = ExternalResult(args.external, args.external_footnote) if args.external is not None else None
    merged = meta.merged(name=args.name, name_suffix=args.name_suffix, paper_title=args.paper_title,
                         authors=args.authors, venue=args.venue, year=args.year, link=args.link,
                         architecture=args.architecture, additional_data=args.additional_data,
                         reported=args.reported, external=external, footnote=args.footnote)
    from dataclasses import asdict

    return EntryMetadata.from_dict({k: v for k, v in asdict(merged).items() if v is not None})  # validate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a finished run, e.g. as RobustBench model_info JSON")
    p.add_argument("format", choices=["robustbench"], help="output format")
    p.add_argument("run_dir", metavar="RUN_DIR", help="finished benchmark run directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output root: DIR/<dataset>/<threat_model>/<Name>.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file with other content")
    p.add_argument("--allow-nonstandard", action="store_true",
                   help="export a run that breaks RobustBench's rules; the footnote says which and why")
    add_metadata_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..leaderboard.robustbench import export_robustbench

    result = export_robustbench(args.run_dir, args.out, metadata_from_args(args), overwrite=args.overwrite,
                                allow_nonstandard=args.allow_nonstandard)
    if result.violations:
        print(f"robustkit: note: {result.name} is a non-standard evaluation ({'; '.join(result.violations)}); the "
              "footnote says so", file=sys.stderr)
    print(result.path)
    return 0
