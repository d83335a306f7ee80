"""Background jobs hosted by the platform's one worker process (`manage.py deliver_postbacks`).

An app registers what it needs done in the background, in its AppConfig.ready():
`background_job_register("reconciliation.runs", every=5, tick=runs_tick, threads=2)`.
The worker runs each registered job in its own threads: a thread calls `tick(stopping)`,
then waits `every` seconds (or less, when the tick says there is more to do), until the
worker stops. A tick does a bounded piece of work and returns; it looks at `stopping`
(a threading.Event) between steps so the worker stops promptly. A tick that raises is
logged and the job goes on at its next tick.

Several worker processes run the same jobs side by side: each job claims its work so
that none is done twice (a compare-and-set in the database, a lease), never by assuming
it is alone.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("infra.jobs")

# tick(stopping) -> True when there is more to do right away (no wait before the next tick)
Tick = Callable[[threading.Event], bool | None]


@dataclass(frozen=True)
class BackgroundJob:
    name: str
    every: float
    tick: Tick
    threads: int = 1
    # Called once when the worker stops and a tick is still in progress after the wait:
    # it puts back what that tick held (e.g. a claimed run), since the process is exiting.
    abandon: Callable[[], None] | None = None


_jobs: dict[str, BackgroundJob] = {}


def background_job_register(
    name: str, *, every: float, tick: Tick, threads: int = 1, abandon: Callable[[], None] | None = None
) -> None:
    """Have the worker call `tick` every `every` seconds in `threads` threads (registering a name again replaces it)."""
    if every <= 0 or threads < 1:
        raise ValueError(f"background job {name}: every must be > 0 and threads >= 1")
    _jobs[name] = BackgroundJob(name=name, every=every, tick=tick, threads=threads, abandon=abandon)


def background_jobs() -> list[BackgroundJob]:
    return list(_jobs.values())


def background_job_tick(job: BackgroundJob, stopping: threading.Event) -> bool:
    """One tick of `job`, its failure logged (never raised): whether it has more to do now."""
    from django.db import close_old_connections

    try:
        return bool(job.tick(stopping))
    except Exception:
        logger.exception("background job %s failed; it runs again at its next tick", job.name)
        return False
    finally:
        close_old_connections()


class BackgroundJobs:
    """The registered jobs running in threads of this process until `stop()`."""

    def __init__(self, jobs: list[BackgroundJob] | None = None, *, stopping: threading.Event | None = None):
        self.jobs = background_jobs() if jobs is None else jobs
        self.stopping = stopping or threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for job in self.jobs:
            for number in range(job.threads):
                thread = threading.Thread(
                    target=self._loop, args=(job,), name=f"job-{job.name}-{number + 1}", daemon=True
                )
                thread.start()
                self.threads.append(thread)
        if self.jobs:
            logger.info("background jobs started: %s", ", ".join(f"{job.name} x{job.threads}" for job in self.jobs))

    def _loop(self, job: BackgroundJob) -> None:
        from django.db import connections

        try:
            while not self.stopping.is_set():
                more = background_job_tick(job, self.stopping)
                if not more:
                    self.stopping.wait(job.every)
        finally:
            connections.close_all()  # this thread's connections

    def run_once(self) -> None:
        """Each job's ticks in this thread until it has nothing more to do now (`--once`)."""
        for job in self.jobs:
            while not self.stopping.is_set() and background_job_tick(job, self.stopping):
                pass

    def stop(self, timeout: float | None = None) -> None:
        """Ask every job to stop and wait up to `timeout` for their threads (a tick in
        progress finishes its step); a job still busy then is abandoned (its `abandon`)."""
        import time

        self.stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = {thread.name.rsplit("-", 1)[0] for thread in self.threads if thread.is_alive()}
        for job in self.jobs:
            if f"job-{job.name}" in busy and job.abandon is not None:
                logger.warning("background job %s still busy at stop: abandoning its work", job.name)
                try:
                    job.abandon()
                except Exception:
                    logger.exception("background job %s: could not abandon its work", job.name)
