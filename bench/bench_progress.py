"""Progress latency: how long each long command leaves a terminal without output.

Runs each command as a user would, on a pseudo-terminal (stdout and stderr), and records when every
chunk of output arrived. Reported per command: the time to the first output (process start, imports
included), the longest silent gap anywhere in the run (start and end included), and the total. A
command passes when neither exceeds ``--budget`` seconds beyond the interpreter's own startup (printed
first: ``python -c "import robustkit.cli"``), which no progress bar can beat.

Reproduce (from the repository root; about 3 to 4 minutes, most of it the full demo)::

    ROBUSTKIT_SHARED=../shared OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_progress.py

``--only demo,accuracy`` runs a subset (with the command a listed one reads from: ``NEEDS``);
``--unsized`` leaves the pty at 0 x 0 columns (as ``script`` and some CI runners do, where tqdm alone
draws nothing); ``--timeline`` prints what arrived when. Point
``PYTHONPATH`` at another checkout (``git archive REV | tar -x -C /tmp/base``) to measure it the same way.

Measured 2026-12-07 on the shared 2-core CPU machine (other jobs running; one thread; 120 x 40 pty),
seconds, first output / longest silent gap / total, before (0058500) and after this change::

    command               before                 after
    demo (full default)   3.5 / 12.8 / 62.0      1.6 / 1.6 / 47.1
    bench tiny_cnn        3.2 / 13.3 / 18.8      1.6 / 1.6 / 12.6
    bench tiny_diffpure   2.5 / 14.0 / 115.9     2.6 / 2.6 / 62.1
    train-diffusion       7.0 /  7.0 / 13.5      1.9 / 1.9 /  9.3
    accuracy              4.1 /  4.1 /  5.1      2.4 / 2.4 /  4.1
    report                4.2 /  4.2 /  4.8      2.1 / 2.1 /  4.8
    make-cifar10c         2.4 /  2.4 /  3.3      1.9 / 1.9 /  3.0
    corruption-sweep      2.6 /  8.1 / 27.5      1.7 / 1.7 / 27.0
    (startup alone, interleaved 3 x each: 2.7-3.2 s before, 2.1-2.6 s after: scipy.stats is now
    imported by the Wilson interval when first used, not by every command)

On an unsized (0 x 0) pty, ``--unsized``, before: ``bench tiny_cnn`` 14.6 s and ``train-diffusion``
7.1 s to the first output (the result: no bar was drawn at all); after: 1.8 s and 1.8 s. Totals swing
with the machine's load (the two columns ran minutes apart); the gaps are what this measures.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path


def commands(tmp: Path, shared: Path | None) -> dict[str, list[str]]:
    """The long commands at small sizes (the demo at its full default: the issue's 82 silent seconds)."""
    out = {
        "demo": ["demo"],
        "bench tiny_cnn": ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--n-examples", "64",
                           "--probe-size", "8"],
        "bench tiny_diffpure": ["bench", "--defense", "tiny_diffpure.digits", "--eps", "0.1", "--attacks", "pgd-eot",
                                "--attack-option", "pgd-eot.steps=5", "--attack-option", "pgd-eot.eot=2",
                                "--n-examples", "8", "--probe-size", "4", "--check-steps", "2", "--check-eot", "1",
                                "--check-square-queries", "10", "--n-reeval", "2", "--run-dir", str(tmp / "dp")],
        "train-diffusion": ["train-diffusion", "tiny_unet.digits", "--out", str(tmp / "train"), "--steps", "50",
                            "--n-examples", "64", "--samples-per-class", "2", "--sample-steps", "10"],
        "accuracy": ["accuracy", "tiny_cnn.digits"],
        "report": ["report", str(tmp / "dp")],  # the run folder "bench tiny_diffpure" wrote
    }
    if shared is not None:
        out["make-cifar10c"] = ["make-cifar10c", "--out", str(tmp / "c10c"), "--data-dir",
                                str(shared / "data" / "cifar10"), "--n-examples", "100", "--corruptions",
                                "fog,glass_blur,gaussian_noise"]
        out["corruption-sweep"] = ["corruption-sweep", "--checkpoint", str(shared / "models" / "resnet20-12fca82f.th"),
                                   "--methods", "source,bn,tent,tea", "--corruptions", "fog,glass_blur,gaussian_noise",
                                   "--n-examples", "100", "--batch-size", "20", "--data-dir", str(tmp / "c10c")]
    return out


#: commands that read what another one wrote: ``--only`` runs that one first
NEEDS = {"report": "bench tiny_diffpure", "corruption-sweep": "make-cifar10c"}


def _absolute_path() -> str:
    """``$PYTHONPATH`` with its entries made absolute (the commands run in another directory)."""
    return os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)


def on_pty(argv: list[str], sized: bool, cwd: Path) -> tuple[int, list[tuple[float, bytes]], float]:
    """Run ``argv`` in ``cwd`` with stdin/stdout/stderr on a pty; (exit code, timestamped chunks, total seconds).
    ``cwd`` is not the checkout: ``python -m`` puts the working directory first on ``sys.path``."""
    master, slave = pty.openpty()
    if sized:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True, cwd=cwd,
                         env={**os.environ, "TERM": os.environ.get("TERM", "xterm"), "PYTHONPATH": _absolute_path()})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                break
            if not data:
                break
            chunks.append((time.perf_counter() - t0, data))
        elif p.poll() is not None:
            break
    rc = p.wait()
    os.close(master)
    return rc, chunks, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated subset of the command names")
    ap.add_argument("--unsized", action="store_true", help="a 0 x 0 pty instead of 120 x 40")
    ap.add_argument("--budget", type=float, default=2.0, help="allowed silence beyond startup (s)")
    ap.add_argument("--timeline", action="store_true", help="print when each chunk arrived")
    args = ap.parse_args()
    shared = Path(os.environ["ROBUSTKIT_SHARED"]) if os.environ.get("ROBUSTKIT_SHARED") else None
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import robustkit.cli"], check=True, cwd=tmp,
                       env={**os.environ, "PYTHONPATH": _absolute_path()})
        startup = time.perf_counter() - t
    print(f"startup (python -c 'import robustkit.cli'): {startup:.1f} s; budget: startup + {args.budget:g} s")
    print(f"{'command':<22} {'rc':>3} {'first output':>13} {'longest gap':>12} {'total':>8}  verdict")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(Path(tmp), shared)
        names = args.only.split(",") if args.only else list(todo)
        names = [n for name in names for n in ([NEEDS[name]] if NEEDS.get(name) not in (None, *names) else []) + [name]]
        for name in names:
            rc, chunks, total = on_pty([sys.executable, "-m", "robustkit", *todo[name]], sized=not args.unsized,
                                       cwd=Path(tmp))
            times = [0.0] + [c[0] for c in chunks] + [total]
            gap = max(b - a for a, b in zip(times, times[1:]))
            first = chunks[0][0] if chunks else float("inf")
            ok = first <= startup + args.budget and gap <= startup + args.budget
            failed += not ok
            print(f"{name:<22} {rc:>3} {first:>12.1f}s {gap:>11.1f}s {total:>7.1f}s  {'ok' if ok else 'SILENT'}")
            if args.timeline:
                for at, data in chunks:
                    print(f"    {at:7.2f}s {data.decode('utf-8', 'replace')[-100:]!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
