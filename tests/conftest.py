"""Shared fixtures: a seeded committee with its keys, and message signing as any principal."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import pytest
from hypothesis import settings

from bftdeliberate.committee import Committee, make_committee
from bftdeliberate.crypto import PrivateKey
from bftdeliberate.kv import KeyValueStore
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.replica import Replica
from bftdeliberate.wire.messages import SignedMessage, sign_message

# Property tests are part of the deterministic suite: the same examples on every run.
settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.load_profile("deterministic")


@pytest.fixture(autouse=True)
def restore_bftd_logger():
    """Every test starts and ends with the ``bftd`` logger as it found it: an in-process
    ``bftd node run`` installs a handler on the stream pytest captured for that test."""
    logger = logging.getLogger("bftd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handlers, level, propagate = saved
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


@dataclass
class Genesis:
    committee: Committee
    member_keys: list[PrivateKey]
    client_keys: dict[str, PrivateKey]

    def sign(self, message, signer: int | str) -> SignedMessage:
        key = self.member_keys[signer] if isinstance(signer, int) else self.client_keys[signer]
        return sign_message(message, key, self.committee.digest)

    def replica(self, replica_id: int, config: ReplicaConfig | None = None) -> Replica:
        return Replica(replica_id, self.committee, self.member_keys[replica_id],
                       KeyValueStore(), config)


def make_genesis(n: int, clients: int = 2, seed: int = 1) -> Genesis:
    committee, member_keys, client_keys = make_committee(n, clients=clients, rng=random.Random(seed))
    return Genesis(committee, member_keys, client_keys)


@pytest.fixture(scope="session")
def genesis4() -> Genesis:
    return make_genesis(4)


@pytest.fixture(scope="session")
def genesis7() -> Genesis:
    return make_genesis(7)
