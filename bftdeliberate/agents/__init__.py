"""Agents: the debaters that call models and the loop that drives them in a peer (IO lives here, not in deliberation/)."""
