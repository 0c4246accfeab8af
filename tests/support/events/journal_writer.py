"""A process appending synthetic events to a journal until it is killed:
``python -m tests.support.events.journal_writer DIRECTORY`` (from the repository root).

It prints ``opened <last seq>`` once the journal is open, then the seq of every event
right after its ``append`` returned: whatever it printed was "sent to a client", so a
``kill -9`` must not lose it.
"""

import sys
import time
from pathlib import Path

from piserver.sessions.journal import Journal, JournalLimits
from tests.support.events import encode, synthetic_event

LIMITS = JournalLimits(max_events=400, segment_bytes=4096)
"""Small segments and retention, so that kills also hit rotations and trimming."""


class WallClock:
    def seconds(self) -> float:
        return time.time()


def main(directory: str) -> None:
    journal = Journal(Path(directory), WallClock(), LIMITS)
    journal.open()
    seq = journal.last_seq
    sys.stdout.write(f"opened {seq}\n")
    sys.stdout.flush()
    while True:
        seq += 1
        event_type, payload = synthetic_event(seq)
        journal.append(seq, event_type, payload, encode(payload))
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
