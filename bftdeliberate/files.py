"""Reading the user's files (manifests, proposals): bounded, UTF-8, and every failure one
``ConfigError`` line naming the file -- the shell side of formats whose rules live in
sans-IO modules (``deliberation/`` must not do IO)."""

from __future__ import annotations

import os

from bftdeliberate.errors import ConfigError


def read_text(path: str | os.PathLike[str], *, max_size: int, kind: str) -> str:
    """The file's text; at most ``max_size`` bytes. ``kind`` names what a directory is not."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read(max_size + 1)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not {kind}") from None
    except PermissionError:
        raise ConfigError(f"{source}: not readable (permission denied)") from None
    except OSError as error:
        raise ConfigError(f"{source}: cannot read ({error.strerror})") from None
    if len(data) > max_size:
        raise ConfigError(f"{source}: larger than {max_size} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None


def load_proposal(path: str | os.PathLike[str]):
    """Read and validate a ``proposal.json`` (see ``deliberation.proposal``)."""
    from bftdeliberate.deliberation.proposal import MAX_PROPOSAL_SIZE, parse_proposal

    text = read_text(path, max_size=MAX_PROPOSAL_SIZE, kind="a proposal")
    return parse_proposal(text, os.fspath(path))
