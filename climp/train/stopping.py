"""Graceful stops: SIGINT (Ctrl-C) or SIGTERM (what schedulers send) ends training after the
current step with a checkpoint; a second signal exits at once. Under DDP the ranks agree on
the stop each step, so a signal that reaches only one rank still stops all of them together.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from .distributed import DistributedContext

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):
    """Training stopped early on a signal, after saving a checkpoint at `step`."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Optional[str]):
        self.signal_name = signal_name
        self.step = step
        self.total_steps = total_steps
        self.checkpoint = checkpoint
        saved = f"checkpoint {checkpoint}" if checkpoint else "its checkpoint"
        super().__init__(f"stopped by {signal_name} after step {step} of {total_steps}; saved {saved}. "
                         "Run the same command with --resume latest to continue.")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by a signal."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


def _say(message: str) -> None:
    print(f"climp: {message}", file=sys.stderr, flush=True)


class StopRequest:
    """Records a stop signal; `installed()` routes SIGINT/SIGTERM here while training runs."""

    def __init__(self, announce: bool = True, exit_now: Callable[[int], None] = os._exit):
        self.signum: Optional[int] = None
        self.announce = announce
        self.exit_now = exit_now
        self._owner_pid = os.getpid()

    @property
    def signal_name(self) -> Optional[str]:
        return signal.Signals(self.signum).name if self.signum else None

    def handle(self, signum: int, frame: object = None) -> None:
        """Signal handler: the first signal asks for a stop, the second exits immediately."""
        if os.getpid() != self._owner_pid:  # a forked data-loader worker: the main process decides
            return
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            if self.announce:
                _say(f"{name} received: finishing the current step, saving a checkpoint and "
                     f"stopping (send {name} again to exit at once without saving)")
            return
        _say(f"second {name} received: exiting now without saving")
        sys.stderr.flush()
        sys.stdout.flush()
        self.exit_now(128 + signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handle SIGINT/SIGTERM inside the block (main thread only), then restore the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def agreed(self, context: DistributedContext) -> bool:
        """Whether any rank was asked to stop (a collective when distributed: call it on every
        rank at the same point); every rank then takes the signal that stopped the job."""
        if context.enabled:
            flag = torch.tensor([self.signum or 0], dtype=torch.long, device=context.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.signum is None:
                self.signum = int(flag.item())
        return self.signum is not None
