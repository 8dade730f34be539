"""require chains: ordered like OpenSSH's AuthenticationMethods, partial-success lists."""

from __future__ import annotations

import pytest

from sftpd.auth.chains import Chains

OFFERED = ("publickey", "password", "keyboard-interactive")


def test_without_require_any_method_alone() -> None:
    c = Chains.build(OFFERED)
    assert c.next_methods([]) == OFFERED
    assert all(c.satisfied([m]) for m in OFFERED)


def test_key_then_password() -> None:
    c = Chains.build(OFFERED, [["publickey", "keyboard-interactive"]])
    assert c.next_methods([]) == ("publickey",)
    assert not c.satisfied(["publickey"])
    assert c.next_methods(["publickey"]) == ("keyboard-interactive",)
    assert c.satisfied(["publickey", "keyboard-interactive"])
    # order matters, as in OpenSSH
    assert not c.satisfied(["keyboard-interactive", "publickey"])
    assert c.next_methods(["keyboard-interactive"]) == ()


def test_alternatives_after_partial_success() -> None:
    c = Chains.build(
        OFFERED, [["publickey", "password"], ["publickey", "keyboard-interactive"], ["password"]]
    )
    assert c.next_methods([]) == ("publickey", "password")
    assert c.next_methods(["publickey"]) == ("password", "keyboard-interactive")
    assert c.satisfied(["password"]) and c.satisfied(["publickey", "password"])


@pytest.mark.parametrize(
    ("offered", "require", "words"),
    [
        (("publickey", "gssapi"), [], "unknown method 'gssapi'"),
        (("publickey",), [["publickey", "password"]], "does not offer"),
        (OFFERED, [[]], "empty chain"),
        (OFFERED, [["password", "password"]], "twice"),
    ],
)
def test_bad_chains(offered: tuple[str, ...], require: list[list[str]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Chains.build(offered, require)
