"""Kill-safe, resumable, sharded run directories.

Layout of a run directory::

    manifest.json                 config, its sha256, the shard list ([start, stop) example ranges)
    checks.json                   sanity-check results (written once)
    shards/shard_00003.pt         x_adv per attack for shard 3 (safetensors; written first)
    shards/shard_00003.meta.json  cost of the shard
    shards/shard_00003.jsonl      one JSON line per example (written last: the completion marker)
    leases/shard_00003.lease      held by the worker running shard 3 (heartbeat = mtime)
    record.json                   the BenchmarkRecord, once every shard is done

Every file is written to a temporary name, fsynced, then renamed, so a run killed at any instant
leaves either a complete shard or none. Re-running with the same directory skips finished shards; a
different config in the same directory is refused with :class:`RunConfigError`.

Workers claim shards with an exclusive-create lease file whose mtime a heartbeat thread refreshes; a
lease older than ``lease_timeout`` seconds is stale and taken over (the taker renames it away first,
so two takers cannot both win). A worker killed mid-write leaves a ``.shard_….tmp`` file behind; the
next owner of that shard removes it when it claims the shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import RobustkitError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class RunConfigError(RobustkitError, ValueError):
    """The run directory belongs to a different configuration (or is not a run directory)."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}"


def make_shards(n: int, shard_size: int) -> list[Shard]:
    return [Shard(i, s, min(s + shard_size, n)) for i, s in enumerate(range(0, n, shard_size))]


class Lease:
    """An exclusive claim on a shard, kept alive by a heartbeat thread until :meth:`release`."""

    def __init__(self, path: Path, heartbeat_s: float):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # taken over as stale: the work will be redone elsewhere
                log.warning("lease %s disappeared while held", self.path)
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


class RunDir:
    """A run directory (see module docstring). ``RunDir.open(path, config, shards)`` creates or resumes."""

    def __init__(self, path: Path, config: dict[str, Any], shards: list[Shard]):
        self.path = path
        self.config = config
        self.hash = config_hash(config)
        self.shards = shards

    # --------------------------------------------------------------------------------- manifest
    @classmethod
    def open(cls, path: str | os.PathLike, config: dict[str, Any], shards: list[Shard]) -> "RunDir":
        path = Path(path)
        h = config_hash(config)
        manifest = path / "manifest.json"
        if manifest.exists():
            try:
                m = json.loads(manifest.read_text())
            except json.JSONDecodeError as e:
                raise RunConfigError(f"{manifest} is not valid JSON ({e}); not a robustkit run directory?") from e
            if m.get("config_hash") != h:
                changed = sorted(k for k in set(m.get("config", {})) | set(config)
                                 if m.get("config", {}).get(k) != config.get(k))
                raise RunConfigError(f"{path} holds a run with a different configuration (differs in: "
                                     f"{', '.join(changed) or 'unknown'}); use another --run-dir")
            stored = [Shard(i, a, b) for i, (a, b) in enumerate(m["shards"])]
            return cls(path, config, stored)
        # temporary files are ours: a run killed while writing its manifest, or another torchrun rank
        # writing the same manifest right now (both renames then install identical content)
        if path.exists() and any(not _is_tmp(p.name) for p in path.iterdir()):
            raise RunConfigError(f"{path} exists, is not empty and has no manifest.json; refusing to write into it")
        atomic_write_text(manifest, json.dumps({"manifest_version": MANIFEST_VERSION, "config_hash": h,
                                                "config": config, "shards": [[s.start, s.stop] for s in shards]},
                                               indent=2, sort_keys=True) + "\n")
        return cls(path, config, shards)

    # ----------------------------------------------------------------------------------- shards
    def _shard_path(self, shard: Shard, suffix: str) -> Path:
        return self.path / "shards" / f"{shard.name}{suffix}"

    def is_done(self, shard: Shard) -> bool:
        return self._shard_path(shard, ".jsonl").exists()

    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not self.is_done(s)]

    def write_shard(self, shard: Shard, records: list[dict[str, Any]], tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
        from safetensors.torch import save

        if tensors:
            atomic_write_bytes(self._shard_path(shard, ".pt"),
                               save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        atomic_write_text(self._shard_path(shard, ".meta.json"), json.dumps(meta, sort_keys=True) + "\n")
        # last: the completion marker
        atomic_write_text(self._shard_path(shard, ".jsonl"), "".join(canonical_json(r) + "\n" for r in records))

    def read_records(self, shard: Shard) -> list[dict[str, Any]]:
        lines = self._shard_path(shard, ".jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line]

    def read_meta(self, shard: Shard) -> dict[str, Any]:
        return json.loads(self._shard_path(shard, ".meta.json").read_text())

    def read_tensors(self, shard: Shard) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        p = self._shard_path(shard, ".pt")
        return load_file(str(p)) if p.exists() else {}

    def all_records(self) -> Iterator[dict[str, Any]]:
        for s in self.shards:
            yield from self.read_records(s)

    # ----------------------------------------------------------------------------------- leases
    def claim(self, shard: Shard, *, lease_timeout: float = 600.0) -> Lease | None:
        """Claim ``shard`` for this process; None when another live worker holds it or it is done."""
        if self.is_done(shard):
            return None
        lease = self.path / "leases" / f"{shard.name}.lease"
        lease.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lease, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - lease.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < lease_timeout:
                    return None
                stale = lease.with_name(f"{lease.name}.stale.{uuid.uuid4().hex}")
                try:
                    os.rename(lease, stale)  # only one taker can win this rename
                except FileNotFoundError:
                    return None
                stale.unlink(missing_ok=True)
                log.warning("took over stale lease of %s (%.0fs without heartbeat)", shard.name, age)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(canonical_json({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
            if self.is_done(shard):  # finished between our check and the claim
                lease.unlink(missing_ok=True)
                return None
            self._remove_orphans(shard, older_than=lease_timeout / 2)
            return Lease(lease, heartbeat_s=max(lease_timeout / 4, 0.05))
        return None

    def _remove_orphans(self, shard: Shard, older_than: float) -> None:
        """Remove temporary files a dead worker left while writing ``shard`` (we now own the shard).

        Only files older than ``older_than`` seconds go: a previous holder of the shard stopped
        heart-beating at least ``3/4 · lease_timeout`` ago, whereas a worker whose lease was wrongly
        judged stale (alive but starved) may be writing a fresh one right now; we leave that alone.
        """
        now = time.time()
        for tmp in (self.path / "shards").glob(f".{shard.name}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime >= older_than:
                    tmp.unlink()
                    log.info("removed %s, left by a worker killed while writing %s", tmp.name, shard.name)
            except FileNotFoundError:  # removed meanwhile by its writer or another taker
                continue
