"""Import TensorFlow without its start-up lines on the console.

TensorFlow prints a few lines from C++ straight to file descriptor 2 while it loads (absl's "All log messages
before absl::InitializeLog()" and the oneDNN notice), whatever ``TF_CPP_MIN_LOG_LEVEL`` says. A command whose
stderr carries its own notes and errors (``python -m lib.eval``) loads TensorFlow here first, with descriptor 2
pointed at /dev/null for that moment only; ``TF_CPP_MIN_LOG_LEVEL=3`` then keeps later log lines out too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def c_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 (what C++ writes to) at /dev/null; Python's own ``sys.stderr`` is flushed first."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Load TensorFlow (and so Keras) without its start-up lines; a no-op once it is loaded."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with c_stderr_silenced():
        import tensorflow  # noqa: F401  (loaded for its side effect: the libraries are in memory)


@contextlib.contextmanager
def no_retracing_advice() -> Iterator[None]:
    """Keep TensorFlow's retracing advice ("5 out of the last 13 calls ... triggered tf.function retracing") out of
    the output: Keras traces its predict step once per model and batch shape, which several models over test
    sets of two sizes reach; harmless here, and alarming to a notebook's reader."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
