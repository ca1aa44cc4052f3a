"""The two error families of DESIGN.md section 4.

``LocalError``: this process misused the API or was given bad input by its user (a bad
committee file, a key file that exists). ``RemoteError``: a peer or client misbehaved; the
honest process counts it, keeps evidence where it can, and drops the input -- it never
crashes on one.
"""


class BftdError(Exception):
    """Base class of every error this package raises on purpose."""


class LocalError(BftdError):
    """This process misused the API (a bug in the caller, not in a peer)."""


class ConfigError(LocalError):
    """Bad user input: a committee manifest, key file or option. The message is one line."""


class KeyFileError(ConfigError):
    """A private or public key file is missing, malformed or would be overwritten."""


class RemoteError(BftdError):
    """A remote party sent something malformed, forged or conflicting."""


class DecodeError(RemoteError):
    """Bytes that are not a valid canonical CBOR message (or frame) of this protocol."""


class FrameTooLarge(DecodeError):
    """A frame header announced more bytes than the named maximum frame size."""


class ProtocolViolation(RemoteError):
    """A well-formed message that breaks a protocol rule (bad signature, wrong sender...)."""


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as trio nurseries raise them; a
    plain exception is its own only leaf."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in leaf_exceptions(inner)]
