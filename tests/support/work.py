"""Work counted, not timed: the Python lines one module executes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class LineCounter:
    """Counts the lines executed in `module_file`, in the threads its tracer is installed in
    (`here()` for this one, `threading.settrace(counter.tracer)` for threads started later)."""

    def __init__(self, module_file: str) -> None:
        self.module_file = module_file
        self.lines = 0

    def _local(self, frame: FrameType, event: str, arg: object) -> object:
        self.lines += event == "line"
        return self._local

    def tracer(self, frame: FrameType, event: str, arg: object) -> object:
        return self._local if frame.f_code.co_filename == self.module_file else None

    @contextmanager
    def here(self) -> Iterator[LineCounter]:
        sys.settrace(self.tracer)
        try:
            yield self
        finally:
            sys.settrace(None)
