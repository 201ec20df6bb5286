"""Exceptions that carry a message a user can act on.

The CLI prints any :class:`DinofeatError` as one line on stderr and exits non-zero.
"""


class DinofeatError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class InputError(DinofeatError):
    """A bad image, video, point or option value."""


class UnknownModelError(DinofeatError):
    """A model name that is not in the registry."""


class WeightsError(DinofeatError):
    """Weights that cannot be found, read, or that do not fit the architecture."""
