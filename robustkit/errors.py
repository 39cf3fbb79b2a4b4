"""Typed errors of robustkit.

Every error a user can cause derives from :class:`RobustkitError`, so a caller (or the CLI) can tell
"you asked for something wrong" apart from a bug. Each also derives from the builtin it refines, so
code that catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class RobustkitError(Exception):
    """Base class of every error robustkit raises on purpose."""


class InputError(RobustkitError, ValueError):
    """A tensor or argument does not satisfy a documented contract.

    The message says what was expected and what was seen, e.g.
    ``expected images of shape [N, 3, 32, 32], got [8, 1, 32, 32]``.
    """


class CheckpointError(RobustkitError, RuntimeError):
    """A checkpoint is missing, corrupt (hash mismatch, unreadable) or does not match the architecture."""


class DatasetError(RobustkitError, FileNotFoundError):
    """A dataset cannot be found, downloaded or read."""


class RegistryError(RobustkitError, KeyError):
    """A name is not registered (or registered twice)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""
