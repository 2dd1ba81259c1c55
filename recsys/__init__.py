"""recsys: recommendations from frozen, transferred item embeddings and a trained two-tower model."""

import logging as _logging

from recsys.runtime import configure_threads as _configure_threads

__version__ = "0.1.0"

# Before torch, faiss or numpy start their thread pools (they read the variables when they load):
# size them to the CPUs this process may use, and let idle workers sleep (recsys.runtime).
try:
    _configure_threads()
except ValueError as _err:  # a malformed RECSYS_THREADS: the CLI names it; a library user gets a warning
    _logging.getLogger(__name__).warning("%s; thread pools keep their library defaults", _err)
