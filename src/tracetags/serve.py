"""``tracetags serve``: N consumer processes, supervised, and the embedded Redis when no URL
is given.  A worker that dies (killed, or its stream deleted under it) is restarted, and so
is one whose fold is stuck (a watchdog: see :class:`Supervisor`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any, Final

import msgspec

from tracetags.embedded import RedisServer, embedded_server
from tracetags.errors import (
    LibraryVersionError,
    RedisRefusedError,
    RedisTlsError,
    TracetagsError,
)
from tracetags.settings import Settings

log = logging.getLogger("tracetags.serve")

_RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
UNBOUNDED_WARNING = (
    "no archive is configured (TRACETAGS_ARCHIVE_URL) for this Redis: nothing is archived or "
    "trimmed, the log is unbounded and grows in Redis's memory until it runs out; set "
    "TRACETAGS_ARCHIVE_URL=file://DIR or s3://BUCKET/PREFIX"
)
_STOP_GRACE_S = 35.0
#: A worker's exit code for a refusal that restarting cannot end (credentials, ACL, TLS
#: trust, a newer library): EX_CONFIG of sysexits.h.
EXIT_REFUSED: Final = 78
#: A worker that ran this long before exiting was healthy: its restart backoff starts over.
HEALTHY_RUN_S: Final = 30.0
#: Slots of the array a worker shares with the supervisor (wall-clock seconds).
WATCH_TICK: Final = 0  # the worker's event loop last ran its watch task
WATCH_FOLD: Final = 1  # a fold call in flight since (0: none)


def run_worker(
    settings_data: dict[str, Any],
    log_level: int = logging.INFO,
    watch: SynchronizedArray[float] | None = None,
) -> None:
    """One consumer process: the FastStream app until SIGTERM/SIGINT (it finishes the batch
    in hand, then exits).  ``watch`` is where it tells the supervisor it is not stuck."""
    from tracetags.consumer import create_app

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FastStream logs its own start/stop lines at the run's log level: a quiet worker
    # (level above WARNING, as in the demo) silences FastStream's logger altogether.
    quiet = log_level > logging.WARNING
    for name in ("faststream", "tracetags.faststream"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if quiet else logging.WARNING)
    settings = msgspec.convert(settings_data, Settings)
    try:
        asyncio.run(create_app(settings, watch=watch).run(log_level=log_level))
    except TracetagsError as exc:
        # Raised only for what waiting will not end (logged by the app): the supervisor
        # stops instead of restarting this worker for ever.
        log.error("consumer stopped: %s", exc)
        sys.exit(EXIT_REFUSED)


class Supervisor:
    """Keeps ``workers`` consumer processes (and the archiver process, when ``archiver``)
    running until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        log_level: int = logging.INFO,
        *,
        archiver: bool = False,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        slots = workers + (1 if archiver else 0)
        self._procs: list[BaseProcess | None] = [None] * slots
        self._restarts = [0] * slots
        self._started_at = [0.0] * slots
        # The consumers' watchdog slots (the archiver, last, has none).
        self._watches = [self._ctx.Array("d", 2) for _ in range(workers)]
        self._stopping = threading.Event()
        self.watchdog_restarts = 0
        #: Why the supervisor gave up (a worker refused for good), or None.
        self.gave_up: str | None = None

    def _spawn(self, slot: int) -> None:
        if slot >= self.workers:
            from tracetags.archive.archiver import run_archiver_process

            target: Callable[..., None] = run_archiver_process
            args: tuple[Any, ...] = (msgspec.to_builtins(self.settings), self.log_level)
            name = "tracetags-archiver"
        else:
            watch = self._watches[slot]
            watch[WATCH_TICK] = 0.0
            watch[WATCH_FOLD] = 0.0
            target, name = run_worker, f"tracetags-consumer-{slot}"
            args = (msgspec.to_builtins(self.settings), self.log_level, watch)
        proc = self._ctx.Process(
            target=target,
            args=args,
            name=name,
            daemon=False,
        )
        proc.start()
        self._procs[slot] = proc
        self._started_at[slot] = time.monotonic()

    def _stuck(self, slot: int) -> str | None:
        """Why the worker in ``slot`` is stuck (its fold call in flight too long, or its
        event loop silent too long after it first ticked), or None."""
        limit = self.settings.watchdog_ms / 1000
        now = time.time()
        tick, fold = self._watches[slot][WATCH_TICK], self._watches[slot][WATCH_FOLD]
        if fold and now - fold > limit:
            return f"a fold call has been in flight for {now - fold:.0f} s"
        if tick and now - tick > limit:
            return f"its event loop has not run for {now - tick:.0f} s"
        return None

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        for slot in range(len(self._procs)):
            self._spawn(slot)
        if on_ready is not None:
            on_ready()
        while not self._stopping.wait(0.2):
            for slot, proc in enumerate(self._procs):
                if proc is None or self._stopping.is_set():
                    continue
                if proc.is_alive():
                    reason = self._stuck(slot) if slot < self.workers else None
                    if reason is None:
                        continue
                    log.error("consumer %d is stuck (%s); killing it", slot, reason)
                    self.watchdog_restarts += 1
                    proc.kill()
                    proc.join(5)
                if time.monotonic() - self._started_at[slot] >= HEALTHY_RUN_S:
                    self._restarts[slot] = 0
                code = proc.exitcode
                if code == EXIT_REFUSED:
                    self.gave_up = f"{proc.name} cannot run: Redis refuses it (see its log above)"
                    log.error("%s; stopping", self.gave_up)
                    self._stopping.set()
                    break
                delay = _RESTART_BACKOFF_S[min(self._restarts[slot], len(_RESTART_BACKOFF_S) - 1)]
                self._restarts[slot] += 1
                log.warning("%s exited with code %s; restarting in %.1fs", proc.name, code, delay)
                if self._stopping.wait(delay):
                    break
                self._spawn(slot)
        self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    def _shutdown(self) -> None:
        procs = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with_signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("consumer %s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]


def with_signal(pid: int, signum: int) -> None:
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def serve(
    settings: Settings,
    workers: int = 1,
    *,
    on_ready: Callable[[Settings], None] | None = None,
    log_level: int = logging.INFO,
) -> None:
    """Run ``workers`` consumers until SIGTERM/SIGINT; with no Redis URL, run the embedded
    Redis (data kept in ``settings.embedded_dir``) for as long as they run."""
    server: RedisServer | None = None
    # The archive's default depends on the embedded Redis: pin it before the URL is set.
    settings = settings.replace(archive_url=settings.archive_location)
    if settings.archive_url is None:
        log.warning(UNBOUNDED_WARNING)
    if settings.redis_url is None:
        server = embedded_server(settings.embedded_dir).start()
        settings = settings.replace(redis_url=server.url)
    try:
        _preflight(settings)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    supervisor = Supervisor(settings, workers, log_level, archiver=settings.archive_url is not None)
    previous = {
        sig: signal.signal(sig, lambda *_: supervisor.stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        supervisor.run(on_ready=(lambda: on_ready(settings)) if on_ready else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
    if supervisor.gave_up is not None:
        raise RedisRefusedError(supervisor.gave_up)


def _preflight(settings: Settings) -> None:
    """Prepare the namespace once before any worker starts: a refusal that no restart ends
    (credentials, ACL, TLS trust, a newer library) is raised here, before the ready banner.
    A transient condition (LOADING, BUSY, unreachable) is left to the workers to wait out."""
    from tracetags.consumer import prepare_namespace

    try:
        prepare_namespace(settings)
    except (RedisRefusedError, RedisTlsError, LibraryVersionError):
        raise
    except TracetagsError as exc:
        log.warning("Redis is not ready yet (%s); the consumers wait for it", exc)
