"""Errors with one-line, human-readable messages.

The CLI prints `fade: error: <message>` for these and never a traceback; library callers can
catch them by type.
"""


class FadeError(Exception):
    """Base class: the message is one line a user can act on."""


class UsageError(FadeError):
    """Bad options or arguments (CLI exit status 2)."""


class BackboneError(FadeError):
    """The model or its weights cannot be loaded (CLI exit status 2)."""


class PromptBankError(FadeError):
    """A prompt bank is missing or invalid."""


class ImageError(FadeError):
    """One input image cannot be used; a batch goes on with the others."""


class MemoryBankError(FadeError):
    """A saved reference bank cannot be used with this model or these settings."""
