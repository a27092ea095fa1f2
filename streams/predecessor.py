"""A restarted worker removes its killed predecessor from the consumer group before it joins.

Why: a SIGKILLed worker stays a member of the group until its session expires (4 s on the embedded broker, 10 s
against Kafka). A supervisor restarts it within a second or two, and its join starts a rebalance that has to wait
for the dead member: on Tansu every member rejoined ~8 s after the kill before partitions moved (docs/bus-facts.md),
and the dead worker's partitions were processed by nobody in between. So each worker records its member id in its
own data directory at every assignment; at start, if the process that wrote the record is gone, it asks the
coordinator to remove that member (LeaveGroup, `infra.bus.groups`) and the group rebalances at once. The embedded
supervisor does the same the moment a worker dies (`infra/embedded/supervisor.py`), 2-3 s sooner, while the new
process is still starting; whichever takes the record first (`take_dead`) removes the member.

Removing is safe whatever the record says: a member id names one consumer instance, so the worst case (the
recorded process is alive after all, say a data directory shared by mistake) is one extra rebalance for it. A
worker whose data directory did not survive (a container without a volume) has no record and waits for the session
to expire, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from infra.bus.groups import remove_member
from infra.config import Settings
from infra.embedded.process import live_process

log = logging.getLogger(__name__)
RECORD_NAME = "group-member.json"
REMOVE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class MemberRecord:
    """Which consumer-group member a worker process was last, and how to tell whether that process still runs."""
    group: str
    member_id: str
    host: str
    pid: int
    started: float  # the process's creation time, so that a reused pid is not taken for the same process

    def process_gone(self) -> bool:
        if self.host != socket.gethostname():
            return False  # another machine's process: its pid says nothing here
        try:
            # A zombie counts as gone: the supervisor sees a death before the parent has reaped the process.
            return live_process(self.pid, self.started, tolerance_s=0.01) is None
        except psutil.Error:
            return False  # cannot tell: leave the member to its session


def record(datadir: Path, group: str, member_id: str) -> None:
    """Remember that this process is `member_id` of `group` (written atomically; a torn record is never read)."""
    me = psutil.Process()
    entry = MemberRecord(group=group, member_id=member_id, host=socket.gethostname(), pid=me.pid,
                         started=me.create_time())
    path = datadir / RECORD_NAME
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(entry)))
    partial.replace(path)


def forget(datadir: Path) -> None:
    """Drop the record after a clean stop: the consumer left the group itself, so there is nothing to remove."""
    (datadir / RECORD_NAME).unlink(missing_ok=True)


def read(datadir: Path) -> MemberRecord | None:
    """The last record written in `datadir`, or None when there is none or it cannot be read."""
    try:
        return MemberRecord(**json.loads((datadir / RECORD_NAME).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable group member record in %s (%s)", datadir, exc)
        return None


def take_dead(datadir: Path, group: str) -> MemberRecord | None:
    """The record in `datadir` if it names a member of `group` whose process is gone, removed from disk: whoever
    takes it removes that member, so that two removers (the supervisor and the restarted worker) never both do.
    Never raises: a record that cannot be removed is left to the member's session (and logged)."""
    previous = read(datadir)
    if previous is None or previous.group != group or not previous.process_gone():
        return None
    try:
        (datadir / RECORD_NAME).unlink()
    except FileNotFoundError:
        return None  # the other remover took it
    except OSError as exc:
        log.warning("cannot take the dead worker's group member record in %s (%s); its member %s stays in group "
                    "%s until its session expires", datadir, exc, previous.member_id, group)
        return None
    return previous


def _give_back(datadir: Path, member: MemberRecord) -> None:
    """Put a taken record back, unless a newer one was written meanwhile, so that a later remover (the restarted
    worker, once the broker answers again) tries again."""
    path = datadir / RECORD_NAME
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(asdict(member)))
        os.link(partial, path)  # fails if a record exists: never replaces the new worker's own
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("could not put back the group member record in %s (%s)", datadir, exc)
    finally:
        partial.unlink(missing_ok=True)


async def remove(settings: Settings, member: MemberRecord, datadir: Path) -> bool:
    """Remove a taken dead worker's `member` from its group. True if removed; never raises. If removing fails (the
    broker down too, say) the record goes back to `datadir` for the next remover, and meanwhile the member expires
    when its session does, as it would have anyway."""
    try:
        removed = await asyncio.wait_for(remove_member(settings, member.group, member.member_id), REMOVE_TIMEOUT_S)
    except asyncio.CancelledError:
        _give_back(datadir, member)
        raise
    except Exception as exc:
        log.warning("could not remove the dead worker's member %s from group %s (%r); the group rebalances when "
                    "its session expires", member.member_id, member.group, exc)
        _give_back(datadir, member)
        return False
    if removed:
        log.info("removed the dead worker's member %s (pid %d, no longer running) from group %s, so that the group "
                 "does not wait for its session to expire", member.member_id, member.pid, member.group)
    return removed  # False: its session had expired already


async def remove_dead_predecessor(settings: Settings, datadir: Path, group: str) -> MemberRecord | None:
    """Remove this worker's predecessor from `group` if its process is gone and nobody removed it yet. Returns the
    removed member's record, or None when there was nothing to remove. Never raises."""
    previous = take_dead(datadir, group)
    if previous is None or not await remove(settings, previous, datadir):
        return None
    return previous
