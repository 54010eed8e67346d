"""The project's error family: a `UserError` reports a problem the user can act on (an input
that cannot be used as it is, an output in the way, an environment that stops the work), in a
message that says what was expected, what was found, where, and what to do.

Each command-line group catches `UserError` once (`shared.cli.cli_group`) and prints its
message as one line, `Error: ...` on stderr, exiting with the error's `exit_code`; any other
exception (a `ValueError` from numpy, a `KeyError`, ...) is a bug and keeps its traceback. So a
third-party error that means bad input (h5py, zarr or json on a user's file) is translated into
a `UserError` where the file is read, naming the file or key, never by a broad catch in a CLI
(the one exception: `shared.cli.MACHINE_ERRNOS`).

Subclasses keep the standard base their callers catch (`InputError` is a `ValueError`,
`MissingInputError` a `FileNotFoundError`, `OutputExistsError` a `FileExistsError`), so code
written against the standard exceptions works unchanged. Elsewhere: `StoreError`
(`shared.store`), `DiskFullError`, `MissingExtraError`, `RemoteUnavailableError`,
`TransferError`, `CheckpointError`, the build's, the cluster's and the trainer's errors.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave or where the work runs, not with the code: the
    message is one line for the user; a CLI exits with `exit_code`."""

    exit_code: int = 1


class InputError(UserError, ValueError):
    """An input (a store, a checkpoint, a run directory, a file) that cannot be used as it is."""


class MissingInputError(UserError, FileNotFoundError):
    """Nothing where an input was said to be."""


class OutputExistsError(UserError, FileExistsError):
    """Something is where an output would go, and may not be replaced."""
