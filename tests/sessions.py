"""The processes of a session a test started (``subprocess.Popen(..., start_new_session=True)``).

Used by tests/test_cluster.py (stopping a sweep and everything it started) and
tests/test_sweep_s3.py (waiting until a killed sweep's Ray workers, in their own process
groups, have gone too).
"""

from __future__ import annotations

import os


def session_pids(sid: int) -> list[int]:
    """The pids of the live processes in session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids
