"""This node's identity across restarts (room placement claims carry it).

A node that stops without releasing its room claims (killed, or its Redis
went away first) leaves them in Redis for their TTL; the next run on the same
data dir must recognise them as its own instead of refusing its own rooms
with ``room_on_other_node``. So the id is kept in ``<data dir>/node-id`` with
the pid and start time of the process that holds it: a new process adopts
the id when that process is gone, and takes a fresh one while it still runs
(two nodes sharing a data dir, as tests do, stay two nodes).

The workers of ``odsmedia serve --workers N`` share one data dir: worker i
keeps its id in ``node-id-worker<i>``, so a worker the supervisor restarts
comes back as the same node (same id, same URL) and finds its claims. (No
dot in that name: write_atomic's temporary file replaces the name's suffix,
so ``node-id.worker1`` and ``node-id.worker2`` would race on one ``node-id.tmp``.)
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from .files import write_atomic

FILE = "node-id"

# In a worker process of ``serve --workers``, its index (odsmedia.workers sets it before the app
# starts); None in a single-process node.
worker_index: int | None = None
# The id identity() last gave this process (a worker reports it to its supervisor).
issued = ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so count after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    if pid == os.getpid():
        return True
    now = _start_time(pid)
    if now is not None:
        return now == started
    if not Path("/proc").is_dir():   # not Linux: only "does the pid exist"
        return pid_alive(pid)
    return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _path(data_dir: Path, worker: int | None) -> Path:
    return Path(data_dir) / (FILE if worker is None else f"{FILE}-worker{worker}")


def identity(data_dir: Path, worker: int | None = None) -> str:
    """This process's node id: the previous run's when that run is over, else a new one."""
    path = _path(data_dir, worker)
    try:
        record = json.loads(path.read_text())
        previous, pid, started = str(record["node_id"]), int(record["pid"]), record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        previous, pid, started = "", 0, None
    if previous and not _alive(pid, started):
        node_id = previous
    elif previous:
        return _issue(uuid.uuid4().hex[:12])     # its holder still runs: be another node, leave the record
    else:
        node_id = uuid.uuid4().hex[:12]
    write_atomic(path, json.dumps({"node_id": node_id, "pid": os.getpid(), "started": _start_time(os.getpid())}))
    return _issue(node_id)


def _issue(node_id: str) -> str:
    global issued
    issued = node_id
    return node_id
