"""Reading the user's files (manifests, proposals): bounded, UTF-8, and every failure one
``ConfigError`` line naming the file -- the shell side of formats whose rules live in
sans-IO modules (``deliberation/`` must not do IO)."""

from __future__ import annotations

import os

from bftdeliberate.errors import ConfigError


def read_bytes(path: str | os.PathLike[str], *, max_size: int, kind: str,
               error: type[ConfigError] = ConfigError) -> bytes:
    """The file's bytes, at most ``max_size``; any failure is one ``error`` line naming the
    file. ``kind`` says what the file should be ("a key file")."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read(max_size + 1)
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except IsADirectoryError:
        raise error(f"{source}: is a directory, not {kind}") from None
    except PermissionError:
        raise error(f"{source}: not readable (permission denied)") from None
    except OSError as exc:
        raise error(f"{source}: cannot read ({exc.strerror})") from None
    if len(data) > max_size:
        raise error(f"{source}: larger than {max_size} bytes; not {kind}")
    return data


def read_text(path: str | os.PathLike[str], *, max_size: int, kind: str) -> str:
    """The file's UTF-8 text (see :func:`read_bytes`)."""
    data = read_bytes(path, max_size=max_size, kind=kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{os.fspath(path)}: not UTF-8 text") from None


def load_proposal(path: str | os.PathLike[str]):
    """Read and validate a ``proposal.json`` (see ``deliberation.proposal``)."""
    from bftdeliberate.deliberation.proposal import MAX_PROPOSAL_SIZE, parse_proposal

    text = read_text(path, max_size=MAX_PROPOSAL_SIZE, kind="a proposal")
    return parse_proposal(text, os.fspath(path))
