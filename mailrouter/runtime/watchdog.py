"""The event loop's watchdog: a thread that notices when the loop stops answering.

An async handler that blocks (``time.sleep``, a synchronous client library) stalls every
session. Four times a second the watchdog asks the loop to answer (one ``call_soon_threadsafe``);
when an answer is more than ``threshold`` seconds late, it reads the loop thread's stack, finds
the innermost frame of one of the router's async handlers, and logs it, once per episode; when
the loop answers again, it logs how long it was blocked in all. No asyncio debug mode needed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import CodeType, FrameType
from typing import Any

from mailrouter.routing.router import Router

log = logging.getLogger(__name__)

THREAD_NAME = "mailrouter-watchdog"
_INTERVAL = 0.25  # seconds between two questions to the loop


class LoopWatchdog:
    """Warns, naming the async handler at fault, when the event loop is blocked for longer than
    ``threshold`` seconds (0: never; the watchdog then starts no thread)."""

    def __init__(self, router: Router, threshold: float) -> None:
        self.router = router
        self.threshold = threshold
        self._stopping = threading.Event()
        self._answered = 0.0  # when the loop last answered (time.monotonic), set on the loop
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch the running loop (call it on the loop's thread)."""
        if not self.threshold:
            return
        loop, ident = asyncio.get_running_loop(), threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, args=(loop, ident), name=THREAD_NAME, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, and wait for the thread to end."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _answer(self) -> None:
        self._answered = time.monotonic()

    def _watch(self, loop: asyncio.AbstractEventLoop, ident: int) -> None:
        asked = 0.0  # when the last question was asked
        blocker = ""  # who blocks the loop, once this episode is logged
        while not self._stopping.wait(_INTERVAL):
            if self._answered >= asked:
                if blocker:
                    blocked = self._answered - asked
                    log.warning("%s blocked the event loop for %.1fs in all", blocker, blocked)
                    blocker = ""
                asked = time.monotonic()
                loop.call_soon_threadsafe(self._answer)
            elif not blocker and time.monotonic() - asked > self.threshold:
                frame = sys._current_frames().get(ident)
                if frame is None:  # the loop's thread ended without stopping the watchdog
                    return
                blocker, where = _blame(frame, _handler_codes(self.router))
                log.warning(
                    "%s blocked the event loop for %.1fs (at %s)",
                    blocker,
                    time.monotonic() - asked,
                    where,
                )


def _handler_codes(router: Router) -> dict[CodeType, str]:
    """The code objects of the router's async handlers, and of the functions they wrap (a
    decorator's ``__wrapped__``), with the handler's name."""
    codes: dict[CodeType, str] = {}
    for route in router.routes():
        for handler in route.handlers:
            func: Any = handler.func
            while handler.is_async and hasattr(func, "__code__") and func.__code__ not in codes:
                codes[func.__code__] = handler.qualname
                func = getattr(func, "__wrapped__", None)
    return codes


def _blame(top: FrameType, codes: dict[CodeType, str]) -> tuple[str, str]:
    """Who blocks the loop, and where: the innermost async handler's frame on the stack whose
    top frame is ``top``, else that top frame."""
    frame: FrameType | None = top
    while frame is not None:
        if frame.f_code in codes:
            return f"async handler {codes[frame.f_code]}", _place(frame)
        frame = frame.f_back
    return "code outside the handlers", _place(top)


def _place(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
