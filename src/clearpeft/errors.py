"""The exceptions the CLI turns into one line: UserError (exit 2), WriteError (exit 1), RunStopped (143 or 130)."""


class UserError(Exception):
    """Bad input from the user: a file, a name or a number that cannot be used.

    The message names the problem and, where there is one, the fix. The CLI prints it on one line and
    exits with code 2; library callers can catch it like any other exception.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors run to pages), for a one-line UserError."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


class WriteError(OSError):
    """A file of a run could not be written: a full disk, a quota, a lost mount. Not bad input, so the CLI
    exits with code 1 (docs/runs.md); the message names the path and the cause on one line."""

    def __init__(self, path, cause: str, errno: int | None = None, hint: str = ""):
        super().__init__(errno or 0, cause, str(path))
        self.path, self.cause, self.hint = str(path), cause, hint

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.cause}" + (f" ({self.hint})" if self.hint else "")


class RunStopped(KeyboardInterrupt):
    """A run ended by SIGTERM or Ctrl-C after its cleanup (lock released, newest checkpoint kept). A
    KeyboardInterrupt, so that a notebook's Ctrl-C still ends as one, and no ``except Exception`` swallows it."""

    def __init__(self, signal_name: str, epochs_done: int | None, out):
        super().__init__(signal_name)
        self.signal_name, self.epochs_done, self.out = signal_name, epochs_done, str(out)
        # the shell's convention: 128 + the signal's number (SIGINT 2, SIGTERM 15)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130

    def where(self) -> str:
        if self.epochs_done is None:
            return "before its first epoch"
        if self.epochs_done == 0:
            return "during epoch 1, before any checkpoint"
        return f"after epoch {self.epochs_done}"

    def cli_line(self) -> str:
        return f"stopped by {self.signal_name} {self.where()}; resume with --resume"

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} {self.where()}; fit(..., resume=True) continues the run in {self.out}"


class RunLocked(UserError):
    """The run folder is in use by another live process (runs.RunLock); ``pid`` and ``host`` name it."""

    def __init__(self, message: str, pid: int | None, host: str | None):
        super().__init__(message)
        self.pid, self.host = pid, host
