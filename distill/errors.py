"""The one table of failure classes and exit codes, for every command.

Schedulers (Kubernetes ``podFailurePolicy``, Argo, SageMaker, cron wrappers) act on the exit code
alone, so each class of failure has its own code and every command uses this table:

====  ====================  ==============================================================
code  name                  meaning, and what a scheduler should do
====  ====================  ==============================================================
0     OK                    done (or, for ``generate`` on a finished corpus, already done)
1     INTERNAL              an unexpected error (a traceback is printed): report it; retrying rarely helps
2     BAD_INPUT             a flag, config file, recipe, seed file, corpus or suite is wrong; the
                            one-line message names it. Fail the job: a retry fails the same way
3     GATE_FAILED           ``eval --gate`` evaluated to false: the student is not promoted
4     MODEL_FAILED          a model (or the teacher reference, or the judge) failed to evaluate
5     DIVERGED              training's loss went NaN/inf; no final model was written
6     LOCK_HELD             another process owns the output folder or store; retry later
7     NOTHING_TO_DO         no new input since the last run: nothing was done
8     STAGE_FAILED          a ``pipeline run`` stage failed (model, training, crash); its own error is
                            printed. Rerun the same run id: finished stages are skipped
74    IO_ERROR              the system refused: permission denied, disk full, file too large; fix
                            the storage and rerun (what was written stays resumable)
75    PREEMPTED             stopped by SIGTERM after saving a resumable state; rerun the same
                            command (train: with --resume) to continue (75 is EX_TEMPFAIL: "try again")
====  ====================  ==============================================================

A user-facing failure is a ``DistillError`` subclass carrying its code; the CLI prints its
message on one line (``error: ...``) and exits with ``exit_code``. ``ConfigError`` (bad input)
stays the base of the input errors raised all over the package.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    GATE_FAILED = 3
    MODEL_FAILED = 4
    DIVERGED = 5
    LOCK_HELD = 6
    NOTHING_TO_DO = 7
    STAGE_FAILED = 8
    IO_ERROR = 74
    PREEMPTED = 75


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.INTERNAL: "unexpected error (a bug: the traceback is printed)",
    ExitCode.BAD_INPUT: "bad input: a flag, config, recipe, seed file, corpus or suite (the message names it)",
    ExitCode.GATE_FAILED: "the eval gate is false: do not promote",
    ExitCode.MODEL_FAILED: "a model, the teacher reference or the judge failed to evaluate",
    ExitCode.DIVERGED: "training diverged (non-finite loss); no final model written",
    ExitCode.LOCK_HELD: "another process holds the lock on the output folder or store",
    ExitCode.NOTHING_TO_DO: "nothing new to do",
    ExitCode.STAGE_FAILED: "a pipeline stage failed (its error is printed); rerun the same run id to resume from it",
    ExitCode.IO_ERROR: "the system refused a read or write: permission denied, disk full, file too large (resumable)",
    ExitCode.PREEMPTED: "stopped by SIGTERM (a job stop, spot interruption, eviction) after saving a resumable state: rerun to continue (train: with --resume)",
}


class DistillError(Exception):
    """A failure a user or a scheduler acts on; ``exit_code`` says which class it is."""

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(DistillError, ValueError):
    """Bad input a user can fix; the message names the file, line, key or flag."""

    exit_code = ExitCode.BAD_INPUT


class TrainingDiverged(DistillError):
    """The loss went non-finite: the run stops before saving a broken final model."""

    exit_code = ExitCode.DIVERGED


class LockHeld(DistillError):
    """Another live process owns the folder or store this command would write."""

    exit_code = ExitCode.LOCK_HELD


class NothingToDo(DistillError):
    """The inputs hold nothing new since the last complete run."""

    exit_code = ExitCode.NOTHING_TO_DO


class Preempted(DistillError):
    """Stopped by SIGTERM after writing a resumable state (``distill.stop``)."""

    exit_code = ExitCode.PREEMPTED


def describe_os_error(exc: OSError) -> tuple[str, ExitCode]:
    """An OSError from the file system as one line naming the path, and its exit code."""
    import errno

    where = exc.filename or ""
    if isinstance(exc, (PermissionError,)) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "permission denied (read-only folder or another owner)"
    elif exc.errno == errno.ENOSPC:
        what = "no space left on the device; free space and rerun the same command to resume"
    elif exc.errno == errno.EFBIG:
        what = "file too large for the file system; free space or use another folder, then rerun to resume"
    elif exc.errno == errno.EDQUOT:
        what = "disk quota exceeded; free space and rerun the same command to resume"
    elif isinstance(exc, FileNotFoundError):
        return f"{where}: no such file or folder", ExitCode.BAD_INPUT
    elif isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return f"{where}: {exc.strerror}", ExitCode.BAD_INPUT
    else:
        what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what, ExitCode.IO_ERROR


def markdown_table() -> str:
    """The exit-code table as Markdown (docs/exit-codes.md is tested equal to it)."""
    lines = ["| code | name | meaning |", "| --- | --- | --- |"]
    lines += [f"| {int(code)} | `{code.name}` | {EXIT_CODE_MEANINGS[code]} |" for code in ExitCode]
    return "\n".join(lines)
