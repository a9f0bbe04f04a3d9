"""``OpenCalls``: the calls whose finals the consumer holds until their ``call.ended.v1`` event.

Each open call remembers the input partition and the offset of its first message read. The
offset the consumer commits for a partition never passes the first message of a call still open
on it (``resume_offset``), so a consumer that restarts, or a new owner of the partition, reads
every final of the call again. A call is abandoned (logged, and it no longer holds the commit back)
when more than ``max_calls`` are open (the least recently active goes) or when no final of it was
read for ``idle_s`` (a producer that never publishes call.ended, such as the recorder, or a call
whose end was lost); if its call.ended event comes after all, its summary has only the finals read
since, so ``finals`` < ``finals_expected``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nlp_consumer.summary import CallTurns, HeardTurn

logger = logging.getLogger(__name__)

Partition = tuple[str, int]


@dataclass
class OpenCall:
    turns: CallTurns
    partition: Partition
    first_offset: int
    last_read_s: float


class OpenCalls:
    def __init__(
        self, max_calls: int, idle_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_calls = max_calls
        self.idle_s = idle_s
        self._clock = clock
        self._calls: OrderedDict[str, OpenCall] = OrderedDict()  # least recently active first

    def add(self, partition: Partition, offset: int, session_id: str, user_id: str, turn: HeardTurn) -> int:
        """Record a final read at ``offset``; the number of calls abandoned to stay in bounds."""
        call = self._calls.get(session_id)
        if call is None:
            call = OpenCall(CallTurns(session_id, user_id), partition, offset, 0.0)
            self._calls[session_id] = call
        call.turns.add(turn)
        call.last_read_s = self._clock()
        self._calls.move_to_end(session_id)
        abandoned = 0
        while len(self._calls) > self.max_calls:
            sid, dropped = self._calls.popitem(last=False)
            logger.warning(
                "call_abandoned session_id=%s finals=%d (more than NLP_MAX_OPEN_CALLS open)",
                sid,
                len(dropped.turns.turns),
            )
            abandoned += 1
        return abandoned

    def expire(self) -> set[Partition]:
        """Abandon the calls without a final for ``idle_s``; the partitions they were on."""
        cutoff = self._clock() - self.idle_s
        idle = [sid for sid, call in self._calls.items() if call.last_read_s < cutoff]
        partitions = set()
        for sid in idle:
            call = self._calls.pop(sid)
            partitions.add(call.partition)
            logger.warning("call_abandoned session_id=%s finals=%d (idle)", sid, len(call.turns.turns))
        return partitions

    def pop(self, session_id: str) -> CallTurns | None:
        """The call's finals, forgetting it (its call.ended event was read)."""
        call = self._calls.pop(session_id, None)
        return None if call is None else call.turns

    def resume_offset(self, partition: Partition, consumed: int) -> int:
        """Where a restart must read ``partition`` from: the first message of its oldest open call,
        else ``consumed`` (the offset after the last message handled)."""
        firsts = [c.first_offset for c in self._calls.values() if c.partition == partition]
        return min([consumed, *firsts])

    def drop_partitions(self, partitions: Iterable[Partition]) -> None:
        """Forget the calls of partitions this consumer no longer owns (their next owner rereads them)."""
        gone = set(partitions)
        for sid in [sid for sid, call in self._calls.items() if call.partition in gone]:
            del self._calls[sid]

    def clear(self) -> None:
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)
