"""The default command on a tiny entry: ``robustkit bench --defense tiny_diffpure.digits --eps 0.1``, timed.

Issue 23 item 5's target: with defaults, at most 10 minutes on 2 CPU cores. The entry's reduced default
budget (:class:`robustkit.defenses.EvaluationBudget`, ``robustkit/defenses/zoo.py``) fills every option
not given. This runs the command as a user would (``robustkit.cli.main``), then prints its wall and
process-CPU time, the record's passes (attacks and checks; a forward counts 1, a forward + backward
``GRAD_COST``), the measured seconds per such pass, the cost model's upper bound on the same run
(every attack on every example, no cascade) and, at the measured rate, what the full protocol
(``--full-budget``: the presets over all 360 images, 10 re-evaluations) would take.

Reproduce (about 8 minutes on a shared 2-core machine; ``--threads 1`` on a busy machine, where two
OpenMP threads per process spin and run several times slower)::

    PYTHONPATH=. .venv/bin/python bench/bench_default_budget.py --threads 1 --run-dir runs/default_budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defense", default="tiny_diffpure.digits")
    p.add_argument("--eps", default="0.1")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import robustkit
    from robustkit.attacks.base import GRAD_COST
    from robustkit.cli import main as cli
    from robustkit.eval.benchmark import _estimated_attack_passes, plan_budget, resolve_attacks
    from robustkit.eval.checks import plan_check_budget

    tmp = tempfile.TemporaryDirectory() if args.run_dir is None else None
    run_dir = Path(args.run_dir or tmp.name) / "run"
    t0, c0 = time.perf_counter(), time.process_time()
    code = cli(["bench", "--defense", args.defense, "--eps", args.eps, "--run-dir", str(run_dir), "--json"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = json.loads((run_dir / "record.json").read_text())
    c = rec["cost"]
    passes = (c["forward_passes"] + (GRAD_COST - 1) * c["backward_passes"]
              + c["checks_forward_passes"] + (GRAD_COST - 1) * c["checks_backward_passes"])

    defense = robustkit.create_defense(args.defense, pretrained=True)
    names = resolve_attacks(defense, "auto")
    n_total = robustkit.load_dataset(rec["dataset"], split=rec["split"])[0].shape[0]
    costs = {}
    for label, use in (("default", True), ("full", False)):
        plan = plan_budget(defense, names, n_examples=None, n_reeval=None, probe_size=None, attack_options=None,
                           examples_chosen=False, use_entry_budget=use)
        n = min(plan.n_examples or n_total, n_total)
        draws = plan.n_reeval if defense.traits.stochastic else 1
        attack = _estimated_attack_passes(names, plan.attack_options, rec["eps"], "Linf", n, draws)
        _, sizing = plan_check_budget(stochastic=defense.traits.stochastic, probe_size=min(plan.probe_size, n),
                                      attack_passes=attack, asked=plan.check_options)
        costs[label] = attack + sizing["check_passes_estimate"]
    rate = wall / passes
    print(f"exit {code}; {rec['defense']}, n={rec['n_examples']}, torch threads {torch.get_num_threads()}")
    print(f"wall {wall:.1f} s, process CPU {cpu:.1f} s; checks {c['checks_seconds']:.1f} s "
          f"({100 * c['checks_fraction']:.0f}% of the record's wall)")
    print(f"passes: attacks {c['forward_passes']} forward / {c['backward_passes']} backward, checks "
          f"{c['checks_forward_passes']} / {c['checks_backward_passes']}; {passes:.0f} forward-equivalents, "
          f"{1000 * rate:.1f} ms each (wall)")
    print(f"cost model: default budget <= {costs['default']:.0f} forward-equivalents (x rate = "
          f"{costs['default'] * rate:.0f} s); full protocol {costs['full']:.3g} (x rate = "
          f"{costs['full'] * rate / 3600:.0f} h)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
