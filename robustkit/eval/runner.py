"""Kill-safe, resumable, sharded run directories whose every aggregated number is verified.

Layout of a run directory::

    manifest.json                   config, its sha256, the shard list ([start, stop) example ranges)
    checks.json                     sanity-check results (written once)
    shards/shard_00003.pt           x_adv per attack for shard 3 (safetensors)
    shards/shard_00003.meta.json    cost of the shard
    shards/shard_00003.jsonl        one JSON line per example
    shards/shard_00003.ledger.json  the ledger entry (written last: the completion marker): the shard's
                                    example indices and the size and sha256 of each of its files
    leases/shard_00003.lease        held by the worker running shard 3 (host, pid, process start time;
                                    heartbeat = mtime)
    damaged/<time>/...              files of shards found damaged on resume, moved aside (never deleted)
    record.json                     the BenchmarkRecord, once every shard is done

Integrity. A shard counts as done only through its ledger entry. Before work starts,
:meth:`RunDir.repair` checks every done shard against the manifest and its entry (indices, sizes,
sha256, the indices of the per-example lines); a shard whose file is missing, truncated, edited,
duplicated from another shard or holds other examples is moved to ``damaged/`` with a warning naming
the file and recomputed. Aggregation reads shards only through :meth:`RunDir.read_shard`, which checks
them again and raises :class:`RunIntegrityError` instead of aggregating a damaged shard.

Kill safety. Every file is written under a temporary name and renamed into place, the ledger entry
last, so a run killed at any instant leaves either a complete shard or none. The fsyncs come in one
batch per shard boundary (the shard's files, its ledger entry, the directory): they make finished work
survive a power loss; correctness does not depend on them, because a file that did not reach the disk
fails its sha256 check on resume and is recomputed. A failed write (disk full, read-only directory,
file-size limit) raises :class:`RunIOError` naming the path and leaves no partial file.

Liveness. Workers claim shards with exclusive lease files. A lease records host, pid, process start
time, boot id and pid namespace: on the same machine a lease whose process is gone (or whose pid now
belongs to another process) is taken over at once; a lease from another machine is taken over once
its heartbeat (the file's mtime, refreshed every ``lease_timeout / 4``) is ``lease_timeout`` old
(default 60 s, ``--lease-timeout``). Every takeover is logged with the previous holder. A worker
killed mid-write leaves a ``.shard_….tmp`` file behind; the next owner of that shard removes it.
"""

from __future__ import annotations

import errno
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
from typing import Any

import torch

from ..errors import RobustkitError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
LEDGER_VERSION = 1
DEFAULT_LEASE_TIMEOUT = 60.0


class RunConfigError(RobustkitError, ValueError):
    """The run directory belongs to a different configuration (or is not a run directory)."""


class RunIntegrityError(RobustkitError, ValueError):
    """A finished shard does not match the manifest or its ledger entry (missing, truncated, edited,
    duplicated or other examples); re-running with the same run directory recomputes it."""


class RunIOError(RobustkitError, OSError):
    """A file of the run directory could not be written (disk full, read-only, file-size limit).

    ``errno`` and ``filename`` are the failed call's; nothing partial is left behind, and re-running
    with the same run directory resumes once the cause is fixed.
    """

    def __str__(self) -> str:  # the message already names the path (OSError would append it again)
        return self.strerror or super().__str__()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def _io_error(e: OSError, path: Path, doing: str) -> RunIOError:
    why = e.strerror or type(e).__name__
    return RunIOError(e.errno, f"cannot {doing} {path}: {why}; nothing partial was kept, re-run with the same "
                      "run directory to resume once that is fixed", str(path))


def _fsync_path(path: Path) -> None:
    """fsync a file or directory (best effort for directories: some filesystems refuse to open them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except IsADirectoryError:
        return
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _install(files: dict[Path, bytes], *, sync: bool = True) -> None:
    """Write ``files`` atomically: every one to a temporary name, then renamed into place in the given
    order (put the completion marker last), then one batch of fsyncs (files, then their directories).

    On any OSError every temporary file is removed and a :class:`RunIOError` names the failed path.
    A SIGKILL at any instant leaves each file either complete or absent.
    """
    tmps: list[tuple[Path, Path]] = []
    current = next(iter(files))
    try:
        for path, data in files.items():
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_name(path)
            tmps.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
        for tmp, path in tmps:
            current = path
            os.replace(tmp, path)
        if sync:
            for _, path in tmps:
                current = path
                _fsync_path(path)
            for d in dict.fromkeys(path.parent for _, path in tmps):
                _fsync_path(d)
    except OSError as e:
        for tmp, _ in tmps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError as cleanup:  # e.g. a read-only directory: say so, the temp file stays hidden
                log.warning("could not remove %s after a failed write (%s)", tmp, cleanup)
        raise _io_error(e, current, "write") from e


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file, a rename and an fsync (see :func:`_install`)."""
    path = Path(path)
    _install({path: data})
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# ------------------------------------------------------------------------------------------- liveness

def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``); None when there
    is no such process or no ``/proc``."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if line is None:
        return None
    # field 2 (comm) may hold spaces and parentheses: the fields after the last ')' start with field 3
    fields = line.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22: starttime
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_process() -> dict[str, Any]:
    """What a lease records about its holder: host, boot id, pid namespace, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
            "pid_namespace": _pid_namespace(), "pid": pid, "start_time": process_start_time(pid)}


def holder_is_gone(holder: Any) -> str | None:
    """Why the process that wrote lease content ``holder`` is certainly gone, or None when it may live.

    Certain only on this machine (same host, boot and pid namespace): the pid no longer exists, or now
    belongs to a process started at another time. A holder elsewhere is judged by its heartbeat.
    """
    if not isinstance(holder, dict):
        return None
    me = this_process()
    if holder.get("host") != me["host"]:
        return None
    if me["boot_id"] is not None and holder.get("boot_id") not in (None, me["boot_id"]):
        return "this host has rebooted since"
    if holder.get("pid_namespace") != me["pid_namespace"] or holder.get("boot_id") != me["boot_id"]:
        return None  # another container or an unknown boot: its pids are not ours to judge
    pid, start = holder.get("pid"), holder.get("start_time")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if start is not None and me["start_time"] is not None:
        now = process_start_time(pid)
        if now is None:
            return f"process {pid} is gone"
        return None if now == start else f"pid {pid} now belongs to another process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is gone"
    except PermissionError:
        return None
    return None


class Lease:
    """An exclusive claim on a shard, kept alive by a heartbeat thread until :meth:`release`."""

    def __init__(self, path: Path, token: str, heartbeat_s: float):
        self.path = path
        self.token = token
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
        if _lease_token(self.path) == self.token:  # not one a taker has installed since
            self.path.unlink(missing_ok=True)


def _read_lease(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # gone, or cut short by a kill while created without link()
        return None


def _lease_token(path: Path) -> str | None:
    c = _read_lease(path)
    return c.get("token") if isinstance(c, dict) else None


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists, atomically: a link of a complete temporary
    file, so a reader never sees it empty (O_EXCL where links are not supported). False if it exists."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):  # no hard links here
                raise
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    except OSError as e:
        raise _io_error(e, path, "create the lease") from e
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- run directory

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
        if path.exists() and not path.is_dir():
            raise RunConfigError(f"{path} is a file, not a run directory; use another --run-dir")
        manifest = path / "manifest.json"
        if manifest.exists():
            m = _load_manifest(manifest)
            if m["config_hash"] != h:
                changed = sorted(k for k in set(m["config"]) | set(config) if m["config"].get(k) != config.get(k))
                raise RunConfigError(f"{path} holds a run with a different configuration (differs in: "
                                     f"{', '.join(changed) or 'unknown'}); use another --run-dir")
            if m["shards"] != [[s.start, s.stop] for s in shards]:
                raise RunConfigError(f"{manifest}: its shard list does not follow from its configuration "
                                     "(edited?); use another --run-dir")
            for sub in ("shards", "leases", "damaged"):
                if (path / sub).exists() and not (path / sub).is_dir():
                    raise RunConfigError(f"{path / sub} is not a folder; not a robustkit run directory?")
            return cls(path, config, shards)
        # temporary files are ours: a run killed while writing its manifest, or another torchrun rank
        # writing the same manifest right now (both renames then install identical content)
        try:
            if path.exists() and any(not _is_tmp(p.name) for p in path.iterdir()):
                raise RunConfigError(f"{path} exists, is not empty and has no manifest.json; refusing to write "
                                     "into it")
        except OSError as e:
            raise RunConfigError(f"cannot read {path}: {e.strerror or e}") from e
        atomic_write_text(manifest, json.dumps({"manifest_version": MANIFEST_VERSION, "config_hash": h,
                                                "config": config, "shards": [[s.start, s.stop] for s in shards]},
                                               indent=2, sort_keys=True) + "\n")
        return cls(path, config, shards)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunDir":
        """An existing run directory, from its checked manifest: for readers (reports, leaderboard
        entries), which then read every shard through :meth:`read_shard` (verified).

        Example::

            >>> run = RunDir.load("runs/resnet20")                                   # doctest: +SKIP
            >>> lines = [r for s in run.shards for r in run.read_shard(s)[0]]       # doctest: +SKIP
        """
        path = Path(path)
        m = _load_manifest(path / "manifest.json")
        return cls(path, m["config"], [Shard(i, a, b) for i, (a, b) in enumerate(m["shards"])])

    # ----------------------------------------------------------------------------------- shards
    def _shard_path(self, shard: Shard, suffix: str) -> Path:
        return self.path / "shards" / f"{shard.name}{suffix}"

    def shard_indices(self, shard: Shard) -> list[int]:
        """The example indices of ``shard`` (from the configuration's ``indices`` when it has them)."""
        idx = self.config.get("indices")
        return list(idx[shard.start:shard.stop]) if isinstance(idx, list) else list(range(shard.start, shard.stop))

    def is_done(self, shard: Shard) -> bool:
        """Whether ``shard`` has a ledger entry (its files are checked by :meth:`verify`)."""
        return self._shard_path(shard, ".ledger.json").exists()

    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not self.is_done(s)]

    def write_shard(self, shard: Shard, records: list[dict[str, Any]], tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
        """Install the shard's files and then its ledger entry, with one batch of fsyncs at the end."""
        from safetensors.torch import save

        indices = self.shard_indices(shard)
        if [r.get("index") for r in records] != indices:
            raise RunIntegrityError(f"{shard.name}: the records to write hold other examples than the manifest's")
        files: dict[Path, bytes] = {}
        if tensors:
            files[self._shard_path(shard, ".pt")] = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        files[self._shard_path(shard, ".meta.json")] = (json.dumps(meta, sort_keys=True) + "\n").encode()
        files[self._shard_path(shard, ".jsonl")] = "".join(canonical_json(r) + "\n" for r in records).encode()
        entry = {"ledger_version": LEDGER_VERSION, "config_hash": self.hash, "shard": shard.index,
                 "start": shard.start, "stop": shard.stop, "indices": indices,
                 "files": {p.name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                           for p, b in files.items()}}
        files[self._shard_path(shard, ".ledger.json")] = _ledger_text(entry).encode()
        try:
            _install(files)
        except RunIOError:
            # a data file renamed before the failure is complete but has no ledger entry: remove it so
            # nothing of the failed attempt remains (the shard is recomputed on resume)
            # (we hold the lease of a shard that had no ledger entry: every one of these paths is ours)
            for p in reversed(files):
                try:
                    if p.exists():
                        p.unlink()
                except OSError as e:
                    log.warning("could not remove %s after a failed write (%s)", p, e)
            raise

    def verify(self, shard: Shard) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Check a done shard; returns its (ledger entry, per-example records).

        Raises :class:`RunIntegrityError` naming the file when the entry does not match the manifest
        (shard, indices, configuration) or a file is missing or differs from its recorded size and
        sha256, or the per-example lines are not the shard's examples in order.
        """
        ledger = self._shard_path(shard, ".ledger.json")
        try:
            text = ledger.read_text()
            entry = json.loads(text)
        except FileNotFoundError as e:
            raise RunIntegrityError(f"{ledger} is missing: {shard.name} is not finished") from e
        except (OSError, ValueError) as e:
            raise RunIntegrityError(f"{ledger} is unreadable ({e})") from e
        if text != _ledger_text(entry):  # written in exactly this form: any other byte is damage
            raise RunIntegrityError(f"{ledger} is not in the form robustkit writes (edited?)")
        indices = self.shard_indices(shard)
        expected = {"ledger_version": LEDGER_VERSION, "config_hash": self.hash, "shard": shard.index,
                    "start": shard.start, "stop": shard.stop, "indices": indices}
        if not isinstance(entry, dict) or set(entry) != {*expected, "files"} or not isinstance(entry["files"], dict):
            seen = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise RunIntegrityError(f"{ledger} is not a ledger entry (fields {seen})")
        for key, want in expected.items():
            if entry.get(key) != want:
                raise RunIntegrityError(f"{ledger}: {key} does not match the manifest (copied from another shard "
                                        "or run?)")
        names = {f"{shard.name}{s}" for s in (".meta.json", ".jsonl")}
        if not names <= set(entry["files"]) or not set(entry["files"]) <= names | {f"{shard.name}.pt"}:
            raise RunIntegrityError(f"{ledger} lists files {sorted(entry['files'])}, expected {sorted(names)} (+ .pt)")
        for name, want in entry["files"].items():
            f = ledger.parent / name
            if not isinstance(want, dict) or set(want) != {"bytes", "sha256"}:
                raise RunIntegrityError(f"{ledger}: entry of {name} is not {{bytes, sha256}}")
            try:
                size = f.stat().st_size
            except FileNotFoundError as e:
                raise RunIntegrityError(f"{f} is missing") from e
            if size != want.get("bytes"):
                guess = "truncated" if isinstance(want.get("bytes"), int) and size < want["bytes"] else "edited"
                raise RunIntegrityError(f"{f} has {size} bytes, its ledger entry says {want.get('bytes')} ({guess}?)")
            if sha256_file(f) != want.get("sha256"):
                raise RunIntegrityError(f"{f} differs from its ledger entry's sha256 (edited?)")
        jsonl = self._shard_path(shard, ".jsonl")
        try:
            records = [json.loads(line) for line in jsonl.read_text().splitlines() if line]
        except ValueError as e:
            raise RunIntegrityError(f"{jsonl} is not valid JSON lines ({e})") from e
        got = [r.get("index") if isinstance(r, dict) else None for r in records]
        if got != indices:
            raise RunIntegrityError(f"{jsonl} holds examples {_span(got)}, the manifest says {_span(indices)}")
        return entry, records

    def read_shard(self, shard: Shard) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The verified per-example records and meta of a done shard (see :meth:`verify`)."""
        _, records = self.verify(shard)
        meta = self._shard_path(shard, ".meta.json")
        try:
            return records, json.loads(meta.read_text())
        except ValueError as e:
            raise RunIntegrityError(f"{meta} is not valid JSON ({e})") from e

    def read_records(self, shard: Shard) -> list[dict[str, Any]]:
        """The per-example lines of ``shard`` as they are on disk, unverified (for inspection and tests;
        aggregation reads through :meth:`read_shard`)."""
        lines = self._shard_path(shard, ".jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line]

    def read_meta(self, shard: Shard) -> dict[str, Any]:
        """The cost file of ``shard`` as it is on disk, unverified (see :meth:`read_records`)."""
        return json.loads(self._shard_path(shard, ".meta.json").read_text())

    def read_tensors(self, shard: Shard) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        p = self._shard_path(shard, ".pt")
        return load_file(str(p)) if p.exists() else {}

    def repair(self) -> list[tuple[Shard, str]]:
        """Move every done shard that fails :meth:`verify` to ``damaged/`` (a warning names it); it is
        then pending and will be recomputed. Returns the (shard, reason) pairs."""
        damaged = []
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        for shard in self.shards:
            ledger = self._shard_path(shard, ".ledger.json")
            try:
                before = ledger.stat()
            except OSError:  # not done (or no shards folder at all): nothing to check
                left = [s for s in (".pt", ".meta.json", ".jsonl") if self._shard_path(shard, s).exists()]
                if left:
                    log.warning("%s has %s but no ledger entry (killed while finishing it, or written by an older "
                                "robustkit): recomputing it", shard.name, ", ".join(shard.name + s for s in left))
                continue
            try:
                self.verify(shard)
                self._drop_dead_lease(shard)
                continue
            except RunIntegrityError as e:
                reason = str(e)
            try:  # the same entry we judged: another worker may have repaired and rewritten it since
                if (ledger.stat().st_ino, ledger.stat().st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
                    continue
            except FileNotFoundError:
                continue
            aside = self.path / "damaged" / stamp
            aside.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(ledger, aside / ledger.name)  # first: the shard is pending from here on
            except FileNotFoundError:
                continue  # moved by another worker's repair
            for suffix in (".pt", ".meta.json", ".jsonl"):
                f = self._shard_path(shard, suffix)
                try:
                    os.replace(f, aside / f.name)
                except FileNotFoundError:
                    pass
            log.warning("%s; recomputing %s (its files moved to %s)", reason, shard.name, aside)
            damaged.append((shard, reason))
        return damaged

    # ----------------------------------------------------------------------------------- leases
    def _drop_dead_lease(self, shard: Shard) -> None:
        """Remove the lease of a finished shard left by a worker killed between its ledger entry and
        the lease's release (harmless, but a run directory should not keep a dead worker's claim)."""
        lease = self.path / "leases" / f"{shard.name}.lease"
        holder = _read_lease(lease)
        if holder is not None and holder_is_gone(holder) is not None:
            lease.unlink(missing_ok=True)
            log.info("removed the lease of finished %s left by pid %s", shard.name, holder.get("pid"))

    def claim(self, shard: Shard, *, lease_timeout: float = DEFAULT_LEASE_TIMEOUT) -> Lease | None:
        """Claim ``shard`` for this process; None when another live worker holds it or it is done."""
        if self.is_done(shard):
            return None
        lease = self.path / "leases" / f"{shard.name}.lease"
        try:
            lease.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io_error(e, lease.parent, "create") from e
        token = uuid.uuid4().hex
        content = canonical_json({**this_process(), "token": token, "time": time.time()}).encode()
        orphans_older_than = lease_timeout / 2
        for _ in range(3):
            if _create_exclusive(lease, content):
                if self.is_done(shard):  # finished between our check and the claim
                    lease.unlink(missing_ok=True)
                    return None
                self._remove_orphans(shard, older_than=orphans_older_than)
                return Lease(lease, token, heartbeat_s=max(lease_timeout / 4, 0.05))
            holder = _read_lease(lease)
            gone = holder_is_gone(holder)
            if gone is None:
                try:
                    age = time.time() - lease.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < lease_timeout:
                    return None
                why = f"no heartbeat for {age:.0f} s (lease timeout {lease_timeout:g} s)"
            else:
                why = gone
                orphans_older_than = 0.0  # its writer is dead: its temporary files are orphans now
            if not self._take_over(lease, holder):
                return None
            who = (f"pid {holder.get('pid')} on {holder.get('host')}" if isinstance(holder, dict)
                   else "an unreadable lease")
            log.warning("took over %s from %s: %s", shard.name, who, why)
        return None

    @staticmethod
    def _take_over(lease: Path, judged: Any) -> bool:
        """Remove the lease judged dead; False when it changed hands meanwhile (it is then put back)."""
        stale = lease.with_name(f"{lease.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(lease, stale)  # only one taker can win this rename
        except FileNotFoundError:
            return False
        if _read_lease(stale) != judged:  # a new holder's lease, installed after we read the dead one's
            try:
                os.link(stale, lease)
            except FileExistsError:
                log.warning("lease %s changed hands twice while being taken over", lease)
            stale.unlink(missing_ok=True)
            return False
        stale.unlink(missing_ok=True)
        return True

    def _remove_orphans(self, shard: Shard, older_than: float) -> None:
        """Remove temporary files a dead worker left while writing ``shard`` (we now own the shard).

        When the previous holder is known to be dead, all of them go. Otherwise only files older than
        ``older_than`` seconds: a previous holder stopped heart-beating at least ``3/4 · lease_timeout``
        ago, whereas a worker whose lease was wrongly judged stale (alive but starved) may be writing a
        fresh one right now; we leave that alone.
        """
        now = time.time()
        for tmp in (self.path / "shards").glob(f".{shard.name}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime >= older_than:
                    tmp.unlink()
                    log.info("removed %s, left by a worker killed while writing %s", tmp.name, shard.name)
            except FileNotFoundError:  # removed meanwhile by its writer or another taker
                continue


def _ledger_text(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True) + "\n"


def _span(idx: list[Any]) -> str:
    if len(idx) > 6:
        return f"[{', '.join(map(str, idx[:3]))}, ..., {idx[-1]}] ({len(idx)})"
    return str(idx)


def _load_manifest(manifest: Path) -> dict[str, Any]:
    """The manifest's content, checked: a typed :class:`RunConfigError` for anything malformed."""
    try:
        m = json.loads(manifest.read_text())
    except FileNotFoundError as e:
        raise RunConfigError(f"{manifest.parent} has no manifest.json; not a robustkit run directory") from e
    except (OSError, ValueError) as e:
        raise RunConfigError(f"{manifest} is not valid JSON ({e}); not a robustkit run directory?") from e
    if not isinstance(m, dict):
        raise RunConfigError(f"{manifest} is not a run manifest (a JSON object)")
    if m.get("manifest_version") != MANIFEST_VERSION:
        raise RunConfigError(f"{manifest}: manifest_version {m.get('manifest_version')!r} is not {MANIFEST_VERSION}")
    if not isinstance(m.get("config"), dict) or not isinstance(m.get("config_hash"), str):
        raise RunConfigError(f"{manifest}: config or config_hash missing")
    try:
        stored_hash = config_hash(m["config"])
    except ValueError as e:
        raise RunConfigError(f"{manifest}: config is not canonical JSON ({e})") from e
    if stored_hash != m["config_hash"]:
        raise RunConfigError(f"{manifest}: config_hash does not match its config (edited?); use another --run-dir")
    shards = m.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s) for s in shards):
        raise RunConfigError(f"{manifest}: shards must be a list of [start, stop] integer pairs")
    return m
