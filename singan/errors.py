"""Errors a user can act on: the message names the input and what is wrong with it."""


class InputError(ValueError):
    """Bad input (an unreadable image, an image too small for the pyramid, a bad option).

    The command-line interface prints these as one line, without a traceback; the batch
    pipeline records the message as the failed row's reason.
    """
