"""The command line's error contract: one line on stderr and exit 2, -v/-q anywhere, a closed stdout is quiet.

(The bad option values of every subcommand are swept by ``tests/test_fuzz_inputs.py``'s ``cli`` category.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustkit import utils
from robustkit.cli import main


@pytest.fixture
def quiet_state():
    """main() sets the robustkit logger level and the progress flag: restore both after the test."""
    logger = logging.getLogger("robustkit")
    level, quiet = logger.level, utils.QUIET
    yield logger
    logger.setLevel(level)
    utils.QUIET = quiet


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, phrase", [
    (["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--device", "foo"], "--device: device must be"),
    (["bench", "--classifier", "tiny_cnn.digits", "--eps", "8"], "did you mean 8/255"),
    (["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--threat-model", "L2", "--eps", "9"],
     "largest distance"),
    (["accuracy", "tiny_cnn.digits", "--device", "cuda:99"], "--device"),
    (["train-diffusion", "--out", "x", "--ema-decay", "1"], "--ema-decay: expected a number in [0, 1)"),
    (["corruption-sweep", "--severity", "9"], "--severity"),
    (["list", "--bogus"], "unrecognized arguments: --bogus"),
    (["accuracy", "Tiny-CNN.Digits"], "did you mean tiny_cnn.digits"),
])
def test_bad_values_are_one_line_and_exit_2(argv, phrase, capsys):
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert "error:" in line and phrase in line, line


def test_run_dir_naming_a_file(tmp_path, capsys):
    f = tmp_path / "record.json"
    f.write_text("{}")
    assert main(["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--no-checks", "--attacks", "pgd",
                 "--n-examples", "4", "--run-dir", str(f)]) == 2
    assert "run_dir" in _one_line_error(capsys) and f.read_text() == "{}"  # nothing lost


def test_os_errors_on_user_paths_are_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["report", str(f / "below")]) == 2  # a path through a file: NotADirectoryError inside
    _one_line_error(capsys)


def test_multi_line_library_messages_become_one_line(tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint\n\nat all")
    assert main(["accuracy", "tiny_cnn.digits", "--checkpoint", str(bad)]) == 2
    assert str(bad) in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["-v", "list"], ["list", "-v"], ["list", "--verbose", "defenses"]])
def test_verbose_before_or_after_the_subcommand(argv, quiet_state, capsys):
    assert main(argv) == 0
    assert quiet_state.level == logging.INFO and not utils.QUIET
    assert capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-q", "list"], ["list", "-q"]])
def test_quiet_before_or_after_the_subcommand(argv, quiet_state, capsys):
    assert main(argv) == 0
    assert quiet_state.level == logging.ERROR and utils.QUIET


def test_verbose_twice_is_debug_and_with_quiet_is_refused(quiet_state, capsys):
    assert main(["-v", "list", "-v"]) == 0
    assert quiet_state.level == logging.DEBUG
    capsys.readouterr()
    assert main(["list", "-v", "-q"]) == 2
    assert "contradict" in _one_line_error(capsys)


def test_closed_stdout_exits_quietly(tmp_path):
    """`robustkit list | head -0`: the reader is gone before the first write; no traceback, exit 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "robustkit", "list", "defenses"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    p.stdout.close()  # before the child has imported torch, so its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err
