"""Two-factor chains (``require``, as OpenSSH's AuthenticationMethods), sans-IO.

A chain is an ordered list of methods that must all succeed, in that order; the user
needs one whole chain. After each success only the methods that come next in a chain
still consistent with what succeeded so far are offered (the partial-success list).
Without ``require`` every offered method is a chain of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

METHODS = ("publickey", "password", "keyboard-interactive")


@dataclass(frozen=True)
class Chains:
    """The accepted chains, and the methods offered (in the order they are offered)."""

    chains: tuple[tuple[str, ...], ...]
    offered: tuple[str, ...]

    @classmethod
    def build(cls, offered: Sequence[str], require: Iterable[Sequence[str]] = ()) -> Chains:
        """Check and build; ValueError names what is wrong (for check-config)."""
        offered_t = tuple(offered)
        for m in offered_t:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; expected one of {', '.join(METHODS)}")
        chains = tuple(tuple(c) for c in require)
        for chain in chains:
            if not chain:
                raise ValueError("an empty chain in require")
            for m in chain:
                if m not in offered_t:
                    raise ValueError(
                        f"require names {m!r}, which authentication_methods does not offer"
                    )
            if len(set(chain)) != len(chain):
                raise ValueError(f"chain {list(chain)} names a method twice")
        return cls(chains or tuple((m,) for m in offered_t), offered_t)

    def _consistent(self, done: Sequence[str]) -> list[tuple[str, ...]]:
        n = len(done)
        return [c for c in self.chains if c[:n] == tuple(done)]

    def satisfied(self, done: Sequence[str]) -> bool:
        """Whether the methods that succeeded, in order, complete a chain."""
        return tuple(done) in self.chains

    def next_methods(self, done: Sequence[str]) -> tuple[str, ...]:
        """The methods to offer now (none: the attempt cannot succeed any more)."""
        n = len(done)
        wanted = {c[n] for c in self._consistent(done) if len(c) > n}
        return tuple(m for m in self.offered if m in wanted)
