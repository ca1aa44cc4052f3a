"""A fast, deterministic stand-in for Ed25519 inside the simulated world.

Simulations verify hundreds of thousands of signatures per second of wall time; real Ed25519
(~55 µs a verification) would cap a laptop at a few seed-runs per second. This backend keeps
the *semantics* the protocol relies on -- only the holder of a seed can produce a signature
that verifies under its public key; any change to the message or the signature fails -- using
a keyed BLAKE2b MAC. Public keys are real Ed25519 public keys derived from the seeds (so the
committee manifest validates exactly as in production), and the backend keeps the
public-key -> seed table that a MAC needs for verification.

Sound inside one simulated world only: Byzantine behaviours sign with their own key object
and never read this table. Never use it outside the simulator.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings

from bftdeliberate.crypto import PUBLIC_KEY_SIZE, SEED_SIZE, SIGNATURE_SIZE

SIMULATED_BACKEND_NAME = "simulated"


class SimulatedSignatureBackend:
    """``SignatureBackend`` with MAC signatures; one instance per world."""

    name = SIMULATED_BACKEND_NAME

    def __init__(self) -> None:
        self._seed_of: dict[bytes, bytes] = {}
        self._public_of: dict[bytes, bytes] = {}

    def public_key(self, seed: bytes) -> bytes:
        public = self._public_of.get(seed)
        if public is None:
            if len(seed) != SEED_SIZE:
                raise ValueError("seed must be 32 bytes")
            public, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
            self._public_of[seed] = public
            self._seed_of[public] = seed
        return public

    def sign(self, seed: bytes, message: bytes) -> bytes:
        self.public_key(seed)  # registers the key for verification
        return hashlib.blake2b(message, key=seed, digest_size=SIGNATURE_SIZE).digest()

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        if type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_SIZE:
            return False
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            return False
        seed = self._seed_of.get(public_key)
        if seed is None:
            return False
        expected = hashlib.blake2b(message, key=seed, digest_size=SIGNATURE_SIZE).digest()
        return hmac.compare_digest(expected, signature)
