"""This node's identity across restarts (room placement claims carry it).

A node that stops without releasing its room claims (killed, or its Redis
went away first) leaves them in Redis for their TTL; the next run on the same
data dir must recognise them as its own instead of refusing its own rooms
with ``room_on_other_node``. So the id is kept in ``<data dir>/node-id`` with
the pid and start time of the process that holds it: a new process adopts
the id when that process is gone, and takes a fresh one while it still runs
(two nodes sharing a data dir, as tests do, stay two nodes).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from .files import write_atomic

FILE = "node-id"


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


def identity(data_dir: Path) -> str:
    """This process's node id: the previous run's when that run is over, else a new one."""
    path = Path(data_dir) / FILE
    try:
        record = json.loads(path.read_text())
        previous, pid, started = str(record["node_id"]), int(record["pid"]), record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        previous, pid, started = "", 0, None
    if previous and not _alive(pid, started):
        node_id = previous
    elif previous:
        return uuid.uuid4().hex[:12]        # its holder still runs: be another node, leave the record
    else:
        node_id = uuid.uuid4().hex[:12]
    write_atomic(path, json.dumps({"node_id": node_id, "pid": os.getpid(), "started": _start_time(os.getpid())}))
    return node_id
