"""bftdeliberate: governable multi-agent deliberation over signed PBFT."""

__version__ = "0.1.0"
