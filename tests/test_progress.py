"""Progress on a terminal, quiet elsewhere: every long command, driven through a real pseudo-terminal.

A user's terminal is a tty on stderr (and stdout): there each command must draw a bar (or a ticking stage
line) before its result, and a bar waiting on a long step must be redrawn (its clock moving). Without a
terminal the output carries no bar and no ``\\r``; ``-v`` gives INFO lines instead (one per step group);
``-q`` gives the results alone. ``-v``/``-q`` work before and after the subcommand.

The commands run in this process (``robustkit.cli.main``) with ``sys.stdout``/``sys.stderr`` on the slave
end of a pty, so ``isatty()`` and the terminal size are the real ones; one test runs the installed
entry point in a subprocess on a pty. Sizes are the tiniest that still run every stage.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
import warnings
from pathlib import Path

import pytest

from robustkit import utils
from robustkit.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread", "restore_cli_state")

BAR = "%|"  # tqdm's percentage and bar edge
TICKING = " ... 00:0"  # a stage line: "loading tiny_cnn.digits ... 00:00"


@pytest.fixture
def restore_cli_state():
    """main() sets the robustkit logger's level and the -q flag: restore both."""
    logger = logging.getLogger("robustkit")
    level, quiet = logger.level, utils.QUIET
    yield
    logger.setLevel(level)
    utils.QUIET = quiet


class Terminal:
    """A pseudo-terminal: ``file`` is its slave end (a tty), a thread drains the master end and keeps each
    chunk with the time it arrived. ``columns=0`` leaves it unsized (0 x 0), as some CI runners' are."""

    def __init__(self, columns: int = 100):
        master, slave = pty.openpty()
        if columns:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
        self.master = master
        self.file = os.fdopen(slave, "w", buffering=1, encoding="utf-8", errors="replace")
        self.chunks: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the slave end was closed
                break
            if not data:
                break
            self.chunks.append((time.perf_counter(), data.decode("utf-8", "replace")))

    def close(self) -> str:
        self.file.close()
        self.reader.join(timeout=10)
        os.close(self.master)
        return self.text

    @property
    def text(self) -> str:
        return "".join(c for _, c in self.chunks)


def on_terminal(monkeypatch, argv: list[str], columns: int = 100) -> tuple[int, str]:
    """Run ``robustkit ARGV`` with stdout and stderr on one pty; (exit code, everything it showed, in order)."""
    term = Terminal(columns)
    monkeypatch.setattr(sys, "stdout", term.file)
    monkeypatch.setattr(sys, "stderr", term.file)
    try:
        rc = main(argv)
    finally:
        monkeypatch.undo()
        text = term.close()
    return rc, text


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory, shared_dir):
    """A 4-image CIFAR-10-C (fog, gaussian noise) regenerated from the shared CIFAR-10 test set."""
    from robustkit.data import cifar10
    from robustkit.data.cifar10c import write_cifar10c

    x, y = cifar10.load_arrays("test", shared_dir / "data" / "cifar10")
    out = tmp_path_factory.mktemp("c10c")
    write_cifar10c(out, x[:4].transpose(0, 2, 3, 1), y[:4], corruptions=("fog", "gaussian_noise"), progress=False)
    return out


TINY_AUTOATTACK = ["--attack-option", "autoattack-standard.steps=2", "--attack-option",
                   "autoattack-standard.square_queries=5", "--attack-option", "autoattack-standard.fab_steps=2",
                   "--attack-option", "autoattack-standard.target_classes=2"]
TINY_CHECKS = ["--probe-size", "4", "--check-steps", "2", "--check-square-queries", "5"]


def command(name: str, tmp_path: Path, request) -> tuple[list[str], str, str]:
    """(argv, text its terminal output must show before the result, the result's text on stdout)."""
    if name == "demo":  # the demo's stages: loading, checks, the shard (clean pass + attack), AutoAttack's cascade
        return (["demo", "--n-examples", "6", *TINY_CHECKS, *TINY_AUTOATTACK], "autoattack (standard)",
                "after autoattack-standard")
    if name == "bench":
        return (["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--n-examples", "6", "--attacks", "pgd",
                 "--attack-option", "pgd.steps=3", *TINY_CHECKS], "benchmark:", "after pgd")
    if name == "accuracy":
        return (["accuracy", "tiny_cnn.digits", "--n-examples", "32", "--batch-size", "8"], "accuracy:",
                "digits/test: accuracy")
    if name == "train-diffusion":
        return (["train-diffusion", "tiny_unet.digits", "--out", str(tmp_path / "run"), "--steps", "3",
                 "--n-examples", "16", "--batch-size", "4", "--samples-per-class", "1", "--sample-steps", "2"],
                "train-diffusion:", "step 3/3")
    shared = request.getfixturevalue("shared_dir")
    if name == "make-cifar10c":
        return (["make-cifar10c", "--out", str(tmp_path / "c10c"), "--data-dir", str(shared / "data" / "cifar10"),
                 "--n-examples", "2", "--corruptions", "fog"], "CIFAR-10-C:", "CIFAR-10-C")
    if name == "corruption-sweep":
        data = request.getfixturevalue("sweep_data")
        return (["corruption-sweep", "--checkpoint", str(shared / "models" / "resnet20-12fca82f.th"), "--methods",
                 "source,tent", "--corruptions", "fog,gaussian_noise", "--n-examples", "4", "--batch-size", "2",
                 "--data-dir", str(data)], "corruption sweep (severity 5)", "**mean**")
    raise AssertionError(name)


COMMANDS = ["demo", "bench", "accuracy", "train-diffusion", "make-cifar10c", "corruption-sweep"]


@pytest.fixture(autouse=True)
def _no_regeneration_warning():
    with warnings.catch_warnings():  # the regenerated CIFAR-10-C says so on every load
        warnings.filterwarnings("ignore", ".* is a robustkit regeneration of CIFAR-10-C", UserWarning)
        yield


@pytest.mark.parametrize("name", COMMANDS)
def test_terminal_shows_progress_before_the_result(name, tmp_path, request, monkeypatch):
    argv, marker, result = command(name, tmp_path, request)
    rc, text = on_terminal(monkeypatch, argv)
    assert rc in (0, 1), text[-2000:]  # 1: a tiny benchmark whose checks flag it unreliable
    assert marker in text, text[-2000:]
    assert BAR in text or TICKING in text
    assert result in text
    # drawn while the work ran: the bar comes before the result it leads to, and is cleared (leave=False)
    assert text.index(marker) < text.rindex(result)


@pytest.mark.parametrize("name", COMMANDS)
def test_no_terminal_no_bars_and_verbose_logs_step_groups(name, tmp_path, request, capsys, caplog):
    argv, _, result = command(name, tmp_path, request)
    caplog.set_level(logging.INFO, logger="robustkit")
    rc = main([*argv, "-v"])  # -v after the subcommand and its options
    out, err = capsys.readouterr()
    assert rc in (0, 1), err[-2000:]
    assert result in out
    for stream in (out, err):
        assert "\r" not in stream and BAR not in stream and TICKING not in stream
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("robustkit") and r.levelno == logging.INFO]
    assert messages, "no INFO line with -v"
    # one line per step group, not one per step: at most ~LOG_GROUPS per bar, and never a flood
    assert len(messages) < 200, messages[:20]
    expected = {"demo": "autoattack: running apgd-ce", "bench": "pgd: step 3/3", "accuracy": "accuracy: 4/4",
                "train-diffusion": "train-diffusion: 3/3", "make-cifar10c": "loading the CIFAR-10 test set",
                "corruption-sweep": "tent on gaussian_noise-5"}[name]
    assert any(expected in m for m in messages), messages


def test_worker_processes_are_followed_from_the_parent(tmp_path, monkeypatch):
    """--executor processes: the workers draw nothing (progress=False); the parent follows their shards."""
    rc, text = on_terminal(monkeypatch, ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--n-examples",
                                         "8", "--batch-size", "4", "--attacks", "pgd", "--attack-option", "pgd.steps=2",
                                         "--no-checks", "--executor", "processes", "--workers", "2",
                                         "--run-dir", str(tmp_path / "run")])
    assert rc == 0, text[-2000:]
    assert "benchmark (2 processes):   0%|" in text or "benchmark (2 processes):  50%|" in text, text[-2000:]
    assert text.index("benchmark (2 processes)") < text.rindex("after pgd")


def test_verbose_on_a_terminal_logs_above_the_bars(tmp_path, request, monkeypatch):
    """-v with bars drawn: each log line starts a line of its own (tqdm.write), never inside a bar's line."""
    import re

    argv, _, result = command("bench", tmp_path, request)
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term.file)
    monkeypatch.setattr(sys, "stderr", term.file)
    console = logging.StreamHandler(term.file)  # what basicConfig gives a user (pytest's handlers hold root)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.root.addHandler(console)
    try:
        rc = main(["-v", *argv])
    finally:
        logging.root.removeHandler(console)
        monkeypatch.undo()
        text = term.close()
    assert rc in (0, 1) and result in text and BAR in text
    starts = [m.start() for m in re.finditer(r"INFO robustkit", text)]
    assert len(starts) > 5
    # at a line start: after a newline, a carriage return, or tqdm's cursor-up to a cleared bar line
    inside = [text[max(0, i - 40):i + 20] for i in starts if i and not (text[i - 1] in "\r\n"
                                                                        or text[:i].endswith("\x1b[A"))]
    assert not inside, inside


def test_warnings_on_a_terminal_go_above_the_bars(monkeypatch):
    from robustkit.cli import _output_above_bars

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term.file)
    with _output_above_bars(), utils.progress_bar(total=2, desc="working") as bar:
        bar.update(1)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("something to know", UserWarning)
    monkeypatch.undo()
    text = term.close()
    i = text.index("UserWarning: something to know")
    line = text[:i].rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert "working" not in line and "%|" not in line, text
    assert text.index("working") < i  # the bar was there first (and is redrawn below the warning)


@pytest.mark.parametrize("name", COMMANDS)
def test_quiet_before_the_subcommand_shows_results_only(name, tmp_path, request, monkeypatch):
    argv, marker, result = command(name, tmp_path, request)
    rc, text = on_terminal(monkeypatch, ["-q", *argv])  # even on a terminal
    assert rc in (0, 1)
    assert result in text
    assert BAR not in text and TICKING not in text and marker not in text.replace(result, "")
    assert "INFO" not in text


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("argv", [
    ["demo"], ["bench", "--classifier", "c", "--eps", "0.1"], ["accuracy", "c"], ["train-diffusion", "--out", "o"],
    ["make-cifar10c", "--out", "o"], ["corruption-sweep"], ["report", "r"],
    ["export", "robustbench", "r", "--out", "o"], ["leaderboard", "build", "r", "--out", "o"],
    ["leaderboard", "import", "m", "--into", "d"], ["list"], ["compare", "a", "b"],
])
def test_verbosity_flags_parse_anywhere(argv, position):
    for flag, dest in (("-v", "verbose"), ("-q", "quiet"), ("--verbose", "verbose"), ("--quiet", "quiet")):
        full = [flag, *argv] if position == "before" else [*argv, flag]
        try:
            args = build_parser().parse_args(full)
        except SystemExit as e:  # a subcommand's own required options differ from the guess above
            pytest.fail(f"{full} did not parse (exit {e.code})")
        assert sum(getattr(args, f"{p}{dest}", 0) for p in ("", "sub_", "subsub_")) == 1, full


# ------------------------------------------------------------------------------------ the bar helpers
def test_unsized_terminal_still_gets_a_bar(monkeypatch):
    """A 0 x 0 pty (``script``, some CI runners): tqdm alone draws nothing there."""
    term = Terminal(columns=0)
    monkeypatch.setattr(sys, "stderr", term.file)
    bar = utils.progress_bar(total=4, desc="unsized")
    bar.update(2)
    bar.close()
    monkeypatch.undo()
    text = term.close()
    assert "unsized:   0%|" in text


def _fast_heartbeat(monkeypatch) -> None:
    """Heartbeats every 0.1 s from a fresh thread (one started by an earlier test may be in a 1 s sleep)."""
    old = utils._heartbeat.thread
    if old is not None:
        old.join(timeout=5 * utils.HEARTBEAT_S)  # it ends once it finds no open bar
    monkeypatch.setattr(utils, "HEARTBEAT_S", 0.1)


def test_a_still_bar_is_redrawn_and_never_after_close(monkeypatch):
    _fast_heartbeat(monkeypatch)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term.file)
    bar = utils.progress_bar(total=2, desc="waiting")
    time.sleep(1.0)  # a long step: no update
    shown = sum("waiting" in c for _, c in term.chunks)
    bar.close()
    closed = time.perf_counter()
    time.sleep(0.35)
    monkeypatch.undo()
    term.close()
    assert shown >= 4, term.chunks  # the first draw and >= 3 heartbeats in 1 s at 0.1 s (slack for a busy CPU)
    after = [c for t, c in term.chunks if t > closed]  # close() clears the line; nothing is drawn after it
    assert not any("waiting" in c for c in after), after
    assert "00:00<?" in term.chunks[0][1]


def test_stage_ticks_and_logs(monkeypatch, caplog):
    _fast_heartbeat(monkeypatch)
    caplog.set_level(logging.INFO, logger="robustkit")
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term.file)
    with utils.stage("loading a thing"):
        time.sleep(0.6)
    monkeypatch.undo()
    text = term.close()
    assert text.count("loading a thing ... 00:00") >= 3
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["loading a thing ...", "loading a thing: done"]


def test_quiet_flag_disables_bars_on_a_terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term.file)
    monkeypatch.setattr(utils, "QUIET", True)
    with utils.progress_bar(total=3, desc="hidden") as bar:
        bar.update(3)
    with utils.stage("hidden stage"):
        pass
    monkeypatch.undo()
    assert term.close() == ""


def test_undrawn_bar_logs_one_line_per_tenth(caplog):
    log = logging.getLogger("robustkit.test_progress")
    caplog.set_level(logging.INFO, logger="robustkit")
    for _ in utils.progress_bar(range(95), desc="steps", enabled=False, logger=log):
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("steps: 10/95 (") and lines[-1].startswith("steps: 95/95 (")
    caplog.clear()
    bar = utils.progress_bar(total=4, desc="quiet", enabled=False, logger=log)
    caplog.set_level(logging.WARNING, logger="robustkit")  # not verbose: nothing
    bar.update(4)
    assert not [r for r in caplog.records if r.levelno == logging.INFO and "quiet" in r.getMessage()]


def test_autoattack_bar_follows_the_cascade(monkeypatch):
    """One step per sub-attack, named while it runs; numerics are pyautoattack's (tests/test_autoattack.py)."""
    import robustkit
    from robustkit.attacks import AutoAttack

    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=6)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term.file)
    res = AutoAttack(eps=0.3, version="custom", attacks=("apgd-ce", "square"), steps=2, square_queries=5)(clf, x, y)
    monkeypatch.undo()
    text = term.close()
    assert "autoattack (custom):   0%|" in text and "apgd-ce" in text
    if "square" in res.info["cascade"]:  # the cascade ran Square (some example survived APGD-CE)
        assert "autoattack (custom):  50%|" in text and "square" in text


def test_entry_point_on_a_terminal(tmp_path):
    """The installed ``robustkit`` process itself on a pty: a bar before the result, -v after the subcommand."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "robustkit", "accuracy", "tiny_cnn.digits", "--n-examples", "16"],
                         stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data.decode("utf-8", "replace"))
    os.close(master)
    assert p.wait(timeout=120) == 0
    text = "".join(chunks)
    assert "loading tiny_cnn.digits ... 00:0" in text and "digits/test: accuracy" in text
    assert text.index("loading tiny_cnn.digits") < text.index("digits/test: accuracy")
    # the stage line is cleared: the last line is the result
    assert text.strip().splitlines()[-1].lstrip("\r ").startswith("tiny_cnn.digits on digits/test")


def test_bars_go_to_stderr_not_stdout_without_a_terminal(capsys):
    with utils.progress_bar(total=2, desc="x") as bar:
        bar.update(2)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
