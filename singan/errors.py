"""Errors a user can act on: the message names the input and what is wrong with it."""


class InputError(ValueError):
    """Bad input (an unreadable image, an image too small for the pyramid, a bad option).

    The command-line interface prints these as one line, without a traceback; the batch
    pipeline records the message as the failed row's reason.
    """


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error on one line, for a terminal, a log, a results table or an MLflow tag.

    An InputError's first line, as it was written for the user; any other error's type and
    first line ("ConnectionError: ..."), since there the type is often what says what broke.
    """
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(err, InputError) and first:
        return first[:limit]
    return (f"{type(err).__name__}: {first}" if first else type(err).__name__)[:limit]
