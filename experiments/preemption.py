"""SLURM pre-emption of a training job launched through submitit: requeue, then resume.

SLURM warns a job before it takes the node away with a signal (submitit submits with
``--signal=USR2@<signal_delay_s>``: sent before the time limit, and at pre-emption when the
cluster sets ``SchedulerParameters=preempt_send_user_signal``). submitit's own handler answers it
by asking the job's callable for its ``checkpoint()`` (hydra-submitit-launcher's returns the
same job again, ``submitit.helpers.DelayedSubmission``), ``scontrol requeue`` and exit.

That handler runs wherever the main thread is, so it could cut an MLflow write in half and
leave the run ``RUNNING``. Here, while a run trains, the signal is one more interrupt of
:func:`experiments.interrupts.deliver_interrupts` (held during MLflow writes); the run is closed
``KILLED`` with the reason (:meth:`Preemption.reason`), and only then does
:meth:`Preemption.requeue` hand the signal to submitit's handler, which requeues the job if it
has a checkpoint to resume from. The restarted job (``SLURM_RESTART_COUNT`` > 0, same overrides)
resumes with ``resume=auto`` semantics (:func:`restart_resume`): its own checkpoint, in its own
output folder, into the same MLflow run. A job without checkpoints is not requeued (it would
only start again from scratch): it stops with :class:`NotRequeued`. See docs/resume.md.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from experiments.interrupts import signal_of

log = logging.getLogger(__name__)

# Set by submitit in every job it runs (its executor's name), and by SLURM in a restarted job.
EXECUTOR_ENV = "SUBMITIT_EXECUTOR"
RESTART_ENV = "SLURM_RESTART_COUNT"


class NotRequeued(RuntimeError):
    """A job without checkpoints received the pre-emption signal: it ends, not requeued."""


def preemption_signal() -> signal.Signals | None:
    """The signal submitit checkpoints and requeues on, inside a submitit SLURM job.

    ``SIGUSR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` names another (submitit's
    ``JobEnvironment.USR_SIG``); ``None`` outside a submitit SLURM job, where nothing requeues.
    """
    if os.environ.get(EXECUTOR_ENV) != "slurm":
        return None
    from submitit import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


def restart_count() -> int:
    """How many times SLURM restarted this job (requeued it, any cause); 0 outside SLURM."""
    try:
        return int(os.environ.get(RESTART_ENV, "0"))
    except ValueError:
        return 0


def restart_resume(resume: str | None, checkpoint_every: int) -> str | None:
    """The ``resume`` a job uses: ``auto`` for a restarted SLURM job with checkpoints.

    A requeued job runs again with its first attempt's overrides; ``auto`` finds the checkpoint
    whose config equals its own in its checkpoint folder (by default its own Hydra output
    folder, the same across restarts: Hydra keeps the sweep's resolved ``${now:...}``), or
    starts afresh if there is none. An explicit ``resume`` is kept.
    """
    if resume is None and checkpoint_every and restart_count() > 0:
        log.info("SLURM restarted this job (restart %d): resume=auto", restart_count())
        return "auto"
    return resume


class Preemption:
    """What a training job does when its pre-emption signal arrives (module docstring).

    Args:
        checkpoint_every: ``train.checkpoint_every`` (0: the job writes no checkpoint).
        epoch: the epoch of the checkpoint the job resumed from, if any.
    """

    def __init__(self, checkpoint_every: int, epoch: int | None = None) -> None:
        self.signum = preemption_signal()
        self.checkpoint_every = checkpoint_every
        self.epoch = epoch

    def signals(self) -> tuple[int, ...]:
        """The signal to add to :func:`~experiments.interrupts.deliver_interrupts`, if any."""
        return () if self.signum is None else (self.signum,)

    def saved(self, epoch: int) -> None:
        """Record that the checkpoint of ``epoch`` is on disk."""
        self.epoch = epoch

    def applies(self, interrupt: BaseException) -> bool:
        """Whether ``interrupt`` is this job's pre-emption signal."""
        return (
            self.signum is not None
            and isinstance(interrupt, KeyboardInterrupt)
            and signal_of(interrupt) == self.signum
        )

    def reason(self, interrupt: KeyboardInterrupt) -> str | None:
        """The ``failure_reason`` of the ``KILLED`` run; ``None`` for another interrupt."""
        if not self.applies(interrupt):
            return None
        name = signal.Signals(self.signum).name
        what = f"pre-empted ({name} from SLURM: pre-emption or time limit)"
        if not self.checkpoint_every:
            return (
                f"{what} without checkpoints (train.checkpoint_every=0): not requeued; rerun "
                "it, with train.checkpoint_every>0 to survive pre-emption"
            )
        if self.epoch is None:
            return f"{what} before its first checkpoint: requeued, starts again in a new run"
        return f"{what} after the checkpoint of epoch {self.epoch}: requeued, resumes from it"

    @contextmanager
    def requeue(self) -> Iterator[None]:
        """Around the run (outside its tracker): on the pre-emption signal, requeue or stop.

        With checkpoints, submitit's handler for the signal (back in place once the run's
        interrupt handlers are gone) calls the launcher's ``checkpoint()``, requeues the job
        with ``scontrol requeue`` and exits (``SystemExit``). Without, raises
        :class:`NotRequeued`: submitit records the job as failed with that message.
        """
        try:
            yield
        except KeyboardInterrupt as interrupt:
            if not self.applies(interrupt):
                raise
            if not self.checkpoint_every:
                raise NotRequeued(self.reason(interrupt)) from None
            handler = signal.getsignal(self.signum)
            if not callable(handler):  # submitit's handler is gone: nothing can requeue
                raise
            log.warning("%s: handing the job to submitit to requeue", self.reason(interrupt))
            handler(self.signum, None)
            raise
