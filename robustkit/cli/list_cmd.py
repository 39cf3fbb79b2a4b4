"""``robustkit list [classifiers|defenses|score-models] [--pattern GLOB]``: registered names, one per line,
each with where its weights stand: present (bundled or in ``$ROBUSTKIT_HOME/checkpoints``), downloadable (the
URL ``pretrained=True`` fetches), manual (the file to put there and where to get it) or none published."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered classifiers, defenses or diffusion score models")
    p.add_argument("what", nargs="?", default="classifiers", choices=["classifiers", "defenses", "score-models"],
                   help="what to list (default: classifiers)")
    p.add_argument("--pattern", default="*", help="glob on names, e.g. '*.cifar10'")
    p.set_defaults(run=run)


def _weights(source) -> str:
    """``weights: present | downloadable: URL | manual: put FILE in DIR (from SOURCE) | none published``."""
    from ..registry import weights_status

    return f"weights: {weights_status(source)}"


def _classifiers(pattern: str) -> list[tuple[str, str]]:
    from ..registry import classifier_config, list_classifiers

    return [(n, f"{classifier_config(n).architecture}  [{_weights(classifier_config(n).weights)}]")
            for n in list_classifiers(pattern)]


def _defense_weights(cfg) -> str:
    """The defense's diffusion weights (its own entry's, or those of the registered score model it builds)
    and its classifier's."""
    from ..diffusion import list_score_models, score_model_config
    from ..registry import classifier_config

    parts = []
    if cfg.weights is not None:
        parts.append(f"diffusion {_weights(cfg.weights)}")
    elif cfg.score_model.split(" ")[0] in list_score_models():
        score_model = cfg.score_model.split(" ")[0]
        parts.append(f"diffusion ({score_model}) {_weights(score_model_config(score_model).weights)}")
    if cfg.classifier:
        parts.append(f"classifier {_weights(classifier_config(cfg.classifier).weights)}")
    return f"  [{'; '.join(parts)}]" if parts else ""


def _defenses(pattern: str) -> list[tuple[str, str]]:
    from ..defenses import defense_config, list_defenses

    rows = []
    for n in list_defenses(pattern):
        cfg = defense_config(n)
        if cfg.classifier:
            behind = f"classifier {cfg.classifier}"
        elif cfg.generative:
            behind = "classified by its diffusion model"
        else:
            behind = "classifier (yours)"
        rows.append((n, f"{cfg.method} on {cfg.dataset}, {behind}{_defense_weights(cfg)}"))
    return rows


def _score_models(pattern: str) -> list[tuple[str, str]]:
    from ..diffusion import list_score_models, score_model_config

    rows = []
    for n in list_score_models(pattern):
        cfg = score_model_config(n)
        train = f"; or train them: {cfg.train_command}" if cfg.train_command else ""
        rows.append((n, f"{cfg.architecture}  [{_weights(cfg.weights)}{train}]"))
    return rows


_LISTERS = {"classifiers": _classifiers, "defenses": _defenses, "score-models": _score_models}


def run(args: argparse.Namespace) -> int:
    rows = _LISTERS[args.what](args.pattern)
    if not rows:  # like grep: a pattern that matches nothing says so and exits 1
        print(f"robustkit: no {args.what} match {args.pattern!r} (robustkit list {args.what} shows them all)",
              file=sys.stderr)
        return 1
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0
