"""Test hooks: named points where a job can be made to stop, so tests can SIGKILL it exactly there.

`RECSYS_TEST_PAUSE_AT` holds comma-separated point names. When a job reaches one of them it writes
one line to stderr (`RECSYS_TEST_PAUSE_AT: paused at NAME (pid N)`) and sleeps
`RECSYS_TEST_PAUSE_SECONDS` (default 600), long enough for a test to kill it. Unset (always, outside
tests), a point costs one dictionary lookup. The points (docs/reliability.md):

    recommend:part:N      the batch job has written chunk N's part file (0-based chunk index)
    recommend:concat:N    the batch job has appended N parts to the final output's temp file
    recommend:replaced    the final output is in place; the work folder is not yet removed
    train:fitted          `recsys train` has fitted on the validation split; the refit has not begun
    bundle:staged         every bundle file is written into the staging folder; not yet renamed
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "RECSYS_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "RECSYS_TEST_PAUSE_SECONDS"


def pause_point(name: str) -> None:
    """Sleep here when `$RECSYS_TEST_PAUSE_AT` names this point (a test hook; a no-op otherwise)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in (part.strip() for part in wanted.split(",")):
        return
    print(f"{PAUSE_ENV}: paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "600")))
