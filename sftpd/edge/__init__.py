"""The network edge: who may connect, how many, and from where (defender, limits, PROXY)."""
