"""How this package's engine process starts: forked from a server process that has imported the
engines' modules (torch, transformers) already.

The server's CLI calls warm() first thing, before the HTTP process imports its own modules: the fork
server's imports run beside the HTTP process's (on two cores, at the same time), and the engine process,
forked once the HTTP process asks for it, begins at the weights. A replica answers ready seconds sooner,
which each step of a rolling upgrade waits for; and a forked engine process ends without tearing its
interpreter down (a second or more with torch loaded). As with spawn, it inherits no threads or locks:
the fork server is a single-threaded process of its own, and it exits with the HTTP process.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext

# What the fork server imports: the engine process's entry point, and with it torch and the engines.
ENGINE_MODULES = ["model_runtime.scheduler.worker.child"]


def engine_context() -> ForkServerContext:
    """The multiprocessing context the engine process starts from (its fork server imports
    ENGINE_MODULES when it starts)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(ENGINE_MODULES)
    return context


def warm() -> None:
    """Start the fork server now, so that its imports overlap the caller's."""
    engine_context()
    forkserver.ensure_running()
