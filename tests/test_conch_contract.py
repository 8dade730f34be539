"""The Conch/Twisted boundary: every internal name sftpd relies on, checked against Twisted.

sftpd overrides Conch's transport, channel and connection methods, reads their private
state and replaces Twisted's reactor poll loop and TCP write path. None of that is public
API: a Twisted release may rename or drop any of it. This test lists each name (the table
NEEDS) and fails, naming the Twisted version, the name and the sftpd module that relies
on it, when one is gone or changed shape. pyproject.toml pins Twisted to the tested range;
run this test first when widening it.
"""

from __future__ import annotations

import inspect
import re
import socket
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import twisted
from twisted.conch import avatar as conch_avatar
from twisted.conch.openssh_compat import primes
from twisted.conch.ssh import _kex, channel, connection, factory, keys, userauth
from twisted.conch.ssh import transport as conch_transport
from twisted.cred import credentials
from twisted.internet import epollreactor, process, protocol, tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.haproxy import _exceptions as haproxy_exceptions
from twisted.protocols.haproxy import _v1parser, _v2parser
from twisted.web import resource

# The group-exchange instance check makes a finite-field DH key, which cryptography
# deprecates; the warning is cryptography's, not Twisted's.
pytestmark = pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")

# ---- the table ---------------------------------------------------------------------------
#
# kind "attr":     ``name`` exists on the class or module (methods: with exactly ``params``
#                  after self, when given: we override it, and Conch calls it with them).
# kind "instance": ``name`` is set on a real instance built as in INSTANCES below.
# kind "source":   the source of method ``name`` still matches ``pattern``: Conch calls
#                  or reads something of ours there (an override, an attribute we set).

OWNERS: dict[str, Any] = {
    "SSHTransportBase": conch_transport.SSHTransportBase,
    "SSHServerTransport": conch_transport.SSHServerTransport,
    "SSHCiphers": conch_transport.SSHCiphers,
    "_kex": _kex,
    "SSHFactory": factory.SSHFactory,
    "SSHUserAuthServer": userauth.SSHUserAuthServer,
    "SSHConnection": connection.SSHConnection,
    "SSHChannel": channel.SSHChannel,
    "ConchUser": conch_avatar.ConchUser,
    "Key": keys.Key,
    "SSHPrivateKey": credentials.SSHPrivateKey,
    "UsernamePassword": credentials.UsernamePassword,
    "primes": primes,
    "tcp.Connection": tcp.Connection,
    "EPollReactor": epollreactor.EPollReactor,
    "Process": process.Process,
    "ProcessProtocol": protocol.ProcessProtocol,
    # the network edge and the event sinks (public Twisted API, and haproxy's parsers)
    "haproxy._v1parser": _v1parser,
    "haproxy._v2parser": _v2parser,
    "haproxy._exceptions": haproxy_exceptions,
    "Protocol": protocol.Protocol,
    "ServerFactory": protocol.ServerFactory,
    "Resource": resource.Resource,
}


@dataclass(frozen=True)
class Need:
    owner: str  # a key of OWNERS
    name: str
    where: str  # the sftpd module that relies on it
    kind: str = "attr"
    params: tuple[str, ...] | None = None
    pattern: str = ""

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"


T, K, S, R, C, A = (
    "sftpd/ssh/transport.py",
    "sftpd/ssh/keyexchange.py",
    "sftpd/ssh/channel.py",
    "sftpd/runtime/reactor.py",
    "sftpd/ssh/ciphers.py",
    "sftpd/ssh/connection.py",
)
SRV, UA, SW = "sftpd/ssh/factory.py", "sftpd/ssh/userauth.py", "sftpd/ssh/sockwrite.py"
CHK = "sftpd/auth/checkers.py"
AV = "sftpd/auth/avatar.py"
EP, EG = "sftpd/edge/proxy.py", "sftpd/edge/gate.py"
HK, MT = "sftpd/events/hooks.py", "sftpd/events/metrics.py"
RS = "sftpd/apps/rsync/bridge.py"
# the connection service guards each of these to drop messages for channels that are gone
GUARDED = (
    "ssh_CHANNEL_OPEN_CONFIRMATION",
    "ssh_CHANNEL_OPEN_FAILURE",
    "ssh_CHANNEL_WINDOW_ADJUST",
    "ssh_CHANNEL_EXTENDED_DATA",
    "ssh_CHANNEL_EOF",
    "ssh_CHANNEL_CLOSE",
    "ssh_CHANNEL_REQUEST",
    "ssh_CHANNEL_SUCCESS",
    "ssh_CHANNEL_FAILURE",
)

NEEDS: tuple[Need, ...] = (
    # -- the transport (sftpd/ssh/transport.py, its key exchange sftpd/ssh/keyexchange.py,
    # sftpd/ssh/factory.py) -------------------------------------------------------------
    # private key exchange state, read and written by ServerTransport and its KeyExchange
    Need("SSHTransportBase", "_keyExchangeState", K),
    Need("SSHTransportBase", "_KEY_EXCHANGE_NONE", K),
    Need("SSHTransportBase", "_KEY_EXCHANGE_REQUESTED", K),
    Need("SSHTransportBase", "_KEY_EXCHANGE_PROGRESSING", K),
    Need("SSHTransportBase", "_blockedByKeyExchange", K),
    Need("SSHTransportBase", "_peerSupportsExtensions", K),
    Need("SSHTransportBase", "_allowedKeyExchangeMessageType", T, params=("messageType",)),
    Need("SSHTransportBase", "_unsupportedVersionReceived", T, params=("remoteVersion",)),
    Need("SSHTransportBase", "_newKeys", K, params=()),
    Need("SSHTransportBase", "_keyExchangeState", T, kind="instance"),  # sendPacket queues
    Need("SSHTransportBase", "_blockedByKeyExchange", T, kind="instance"),
    Need("SSHTransportBase", "currentEncryptions", K, kind="instance"),
    # the private KEX helper module
    Need("_kex", "getSupportedKeyExchanges", "sftpd/ssh/policy.py"),
    Need("_kex", "isDynamicPrimesGroup", T),  # apply_policy
    Need("_kex", "isDynamicPrimesGroup", K),  # which KEX message is legal
    # methods ServerTransport overrides (Conch calls them with these parameters)
    Need("SSHTransportBase", "connectionMade", T, params=()),
    Need("SSHTransportBase", "connectionLost", T, params=("reason",)),
    Need("SSHTransportBase", "dataReceived", T, params=("data",)),
    Need("SSHTransportBase", "dispatchMessage", T, params=("messageNum", "payload")),
    Need("SSHTransportBase", "sendPacket", T, params=("messageType", "payload")),
    Need("SSHTransportBase", "sendKexInit", K, params=()),
    Need("SSHTransportBase", "sendDisconnect", T, params=("reason", "desc")),
    Need("SSHTransportBase", "sendUnimplemented", T, params=()),
    Need("SSHTransportBase", "receiveError", T, params=("reasonCode", "description")),
    Need("SSHTransportBase", "ssh_DISCONNECT", T, params=("packet",)),
    Need("SSHServerTransport", "ssh_KEXINIT", K, params=("packet",)),
    Need("SSHTransportBase", "sendExtInfo", SRV, params=("extensions",)),
    Need("SSHTransportBase", "loseConnection", SRV, params=()),  # shutdown closes sessions
    # idle timers start once userauth hands over to ssh-connection
    Need("SSHTransportBase", "setService", SRV, params=("service",)),
    Need("SSHConnection", "sendGlobalRequest", SRV, params=("request", "data", "wantReply")),
    # public state ServerTransport sets or reads in place of Conch's own code
    Need("SSHTransportBase", "supportedCiphers", T),
    Need("SSHTransportBase", "supportedMACs", T),
    Need("SSHTransportBase", "supportedKeyExchanges", T),
    Need("SSHTransportBase", "supportedPublicKeys", T),
    Need("SSHTransportBase", "supportedCompressions", T),
    Need("SSHTransportBase", "supportedVersions", T),
    Need("SSHTransportBase", "ourVersionString", T),
    Need("SSHTransportBase", "gotVersion", T),
    Need("SSHTransportBase", "incomingPacketSequence", T),
    Need("SSHTransportBase", "outgoingPacketSequence", T),
    Need("SSHTransportBase", "service", T),
    Need("SSHTransportBase", "kexAlg", K),  # a property with a setter
    Need("SSHServerTransport", "ignoreNextPacket", K),
    Need("SSHTransportBase", "isEncrypted", UA, params=("direction",)),
    # what Conch's own code does with what we set or override
    Need("SSHTransportBase", "_keySetup", K, "source", pattern=r"self\.nextEncryptions\.setKeys\("),
    Need("SSHTransportBase", "_keySetup", T, "source", pattern=r"self\.sendPacket\(MSG_NEWKEYS"),
    Need("SSHServerTransport", "_keySetup", SRV, "source", pattern=r"self\.sendExtInfo\("),
    Need("SSHServerTransport", "ssh_NEWKEYS", K, "source", pattern=r"self\._newKeys\(\)"),
    Need(
        "SSHTransportBase",
        "_newKeys",
        K,
        "source",
        pattern=r"self\.currentEncryptions = self\.nextEncryptions",
    ),
    Need("SSHTransportBase", "_newKeys", K, "source", pattern=r"self\._blockedByKeyExchange"),
    Need("SSHTransportBase", "isEncrypted", UA, "source", pattern=r"currentEncryptions\.inCipType"),
    Need("SSHTransportBase", "connectionLost", T, "source", pattern=r"self\.logoutFunction\(\)"),
    Need(
        "SSHServerTransport",
        "ssh_KEX_DH_GEX_INIT",
        K,
        "source",
        pattern=r"self\.otherKexInitPayload",
    ),
    Need(
        "SSHServerTransport", "ssh_KEX_DH_GEX_INIT", K, "source", pattern=r"self\.ourKexInitPayload"
    ),
    Need(
        "SSHServerTransport",
        "ssh_KEX_DH_GEX_INIT",
        T,
        "source",
        pattern=r"self\.otherVersionString",
    ),
    Need("SSHServerTransport", "ssh_KEX_DH_GEX_INIT", K, "source", pattern=r"self\.keyAlg"),
    Need(
        "SSHServerTransport",
        "ssh_KEX_DH_GEX_REQUEST_OLD",
        K,
        "source",
        pattern=r"_ssh_KEXDH_INIT|_ssh_KEX_ECDH_INIT",
    ),
    Need("SSHServerTransport", "ssh_KEX_DH_GEX_REQUEST", K),
    # KeyExchange._expected: "the group was sent" is hasattr(self, "dhSecretKey")
    Need("SSHTransportBase", "_startEphemeralDH", K, "source", pattern=r"self\.dhSecretKey = "),
    Need("SSHTransportBase", "_finishEphemeralDH", K, "source", pattern=r"del self\.dhSecretKey"),
    Need("SSHTransportBase", "dhSecretKey", K, kind="instance"),
    # the pending-keys object (_NextKeys subclasses it)
    Need("SSHCiphers", "__init__", K, params=("outCip", "inCip", "outMac", "inMac")),
    Need(
        "SSHCiphers",
        "setKeys",
        K,
        params=("outIV", "outKey", "inIV", "inKey", "outInteg", "inInteg"),
    ),
    Need("SSHCiphers", "outCipType", K, kind="instance"),
    Need("SSHCiphers", "inCipType", K, kind="instance"),
    # the factory (server.Factory replaces __init__ and buildProtocol without super())
    Need("SSHFactory", "buildProtocol", SRV, params=("addr",)),
    Need("SSHFactory", "services", SRV),
    Need("SSHFactory", "getDHPrime", SRV, "source", pattern=r"self\.primes"),
    Need("SSHServerTransport", "_getHostKeys", SRV, "source", pattern=r"self\.factory\.publicKeys"),
    Need(
        "SSHServerTransport", "_getHostKeys", SRV, "source", pattern=r"self\.factory\.privateKeys"
    ),
    Need("primes", "parseModuliFile", SRV),
    Need("Key", "supportedSignatureAlgorithms", SRV, params=()),
    Need("Key", "sshType", "sftpd/ssh/hostkeys.py", params=()),
    # -- user authentication (sftpd/auth) ------------------------------------------------
    Need("SSHUserAuthServer", "serviceStarted", UA, params=()),
    # one request at a time, the attempt count on the transport (ssh/userauth.py, login.py)
    Need("SSHUserAuthServer", "serviceStopped", UA, params=()),
    Need("SSHUserAuthServer", "ssh_USERAUTH_REQUEST", UA, params=("packet",)),  # replaced
    Need("SSHUserAuthServer", "_cbFinishedAuth", UA, params=("result",)),
    Need("SSHUserAuthServer", "_ebMaybeBadAuth", UA, params=("reason",)),
    Need("SSHUserAuthServer", "_ebBadAuth", UA, params=("reason",)),
    Need("SSHUserAuthServer", "_ebPassword", UA, params=("f",)),
    Need("SSHUserAuthServer", "interfaceToMethod", UA),
    # auth_publickey is ours (certificates, client address); it keeps Conch's PK_OK answer
    Need("SSHUserAuthServer", "_ebCheckKey", UA, params=("reason", "packet")),
    # keyboard-interactive: message 61 reaches ssh_USERAUTH_INFO_RESPONSE through this
    # table, and a dropped conversation relies on IgnoreAuthentication sending nothing
    Need("SSHUserAuthServer", "protocolMessages", UA),
    Need("SSHUserAuthServer", "_ebBadAuth", UA, "source", pattern=r"IgnoreAuthentication"),
    Need("SSHUserAuthServer", "_ebBadAuth", UA, "source", pattern=r"self\.loginAttempts \+= 1"),
    Need("SSHUserAuthServer", "tryAuth", UA, params=("kind", "user", "data")),
    Need("SSHUserAuthServer", "clock", UA),
    Need("SSHUserAuthServer", "loginTimeout", UA),
    Need("SSHUserAuthServer", "attemptsBeforeDisconnect", UA),
    Need("SSHUserAuthServer", "passwordDelay", UA),
    Need(
        "SSHUserAuthServer",
        "serviceStarted",
        UA,
        "source",
        pattern=r"self\.clock\.callLater\(\s*self\.loginTimeout",
    ),
    Need("SSHUserAuthServer", "_ebPassword", UA, "source", pattern=r"self\.passwordDelay"),
    Need(
        "SSHUserAuthServer", "_ebBadAuth", UA, "source", pattern=r"self\.attemptsBeforeDisconnect"
    ),
    Need(
        "SSHUserAuthServer",
        "_cbFinishedAuth",
        T,
        "source",
        pattern=r"self\.transport\.logoutFunction = ",
    ),
    # the credentials Conch's userauth builds and our checkers read
    Need(
        "SSHPrivateKey",
        "__init__",
        CHK,
        params=("username", "algName", "blob", "sigData", "signature"),
    ),
    Need(
        "SSHUserAuthServer",
        "auth_publickey",
        CHK,
        "source",
        pattern=r"credentials\.SSHPrivateKey\(",
    ),
    Need(
        "SSHUserAuthServer",
        "auth_password",
        CHK,
        "source",
        pattern=r"credentials\.UsernamePassword\(",
    ),
    *(Need("SSHPrivateKey", n, CHK, kind="instance") for n in ("username", "algName", "blob")),
    *(Need("SSHPrivateKey", n, CHK, kind="instance") for n in ("sigData", "signature")),
    Need("UsernamePassword", "username", CHK, kind="instance"),
    Need("UsernamePassword", "password", CHK, kind="instance"),
    # -- the connection service (sftpd/ssh/connection.py) ----------------------------------------
    Need("SSHConnection", "packetReceived", A, params=("messageNum", "packet")),
    Need("SSHConnection", "serviceStarted", A, params=()),  # registers the TCP producer
    Need("SSHConnection", "serviceStopped", A, params=()),
    Need("SSHConnection", "ssh_CHANNEL_DATA", A, params=("packet",)),  # replaced, no super()
    Need("SSHConnection", "sendData", A, params=("channel", "data")),  # replaced, no super()
    Need("SSHConnection", "sendExtendedData", A, params=("channel", "dataType", "data")),
    Need("SSHConnection", "adjustWindow", A, params=("channel", "bytesToAdd")),
    *(Need("SSHConnection", name, A, params=("packet",)) for name in GUARDED),
    Need("SSHConnection", "channels", A, kind="instance"),
    Need("SSHConnection", "channelsToRemoteChannel", A, kind="instance"),
    Need("SSHConnection", "ssh_CHANNEL_WINDOW_ADJUST", S, "source", pattern=r"\.addWindowBytes\("),
    Need("SSHConnection", "getChannel", A, "source", pattern=r"avatar\.lookupChannel\("),
    Need("SSHConnection", "gotGlobalRequest", A, "source", pattern=r"avatar\.gotGlobalRequest\("),
    Need("ConchUser", "__init__", AV, params=()),
    Need(
        "ConchUser", "lookupChannel", AV, params=("channelType", "windowSize", "maxPacket", "data")
    ),
    Need("ConchUser", "gotGlobalRequest", AV, params=("requestType", "data")),
    Need("ConchUser", "channelLookup", AV, kind="instance"),
    Need("ConchUser", "subsystemLookup", AV, kind="instance"),
    # -- the session channel (sftpd/ssh/channel.py) ------------------------------------------
    Need(
        "SSHChannel",
        "__init__",
        S,
        params=(
            "localWindow",
            "localMaxPacket",
            "remoteWindow",
            "remoteMaxPacket",
            "conn",
            "data",
            "avatar",
        ),
    ),
    Need("SSHChannel", "name", S),
    Need("SSHChannel", "write", S, params=("data",)),  # replaced, no super()
    Need("SSHChannel", "addWindowBytes", S, params=("data",)),  # replaced, no super()
    Need("SSHChannel", "dataReceived", S, params=("data",)),
    Need("SSHChannel", "extReceived", S, params=("dataType", "data")),
    Need("SSHChannel", "eofReceived", S, params=()),
    Need("SSHChannel", "closeReceived", S, params=()),
    Need("SSHChannel", "closed", S, params=()),
    Need("SSHChannel", "requestReceived", S, "source", pattern=r'"request_" \+'),
    Need("SSHChannel", "localWindowSize", S, kind="instance"),
    Need("SSHChannel", "localWindowLeft", S, kind="instance"),
    Need("SSHChannel", "localMaxPacket", S, kind="instance"),
    Need("SSHChannel", "remoteWindowLeft", S, kind="instance"),
    Need("SSHChannel", "remoteMaxPacket", S, kind="instance"),
    Need("SSHChannel", "localClosed", S, kind="instance"),
    Need("SSHChannel", "conn", S, kind="instance"),
    Need("SSHConnection", "sendRequest", S, params=("channel", "requestType", "data", "wantReply")),
    Need("SSHConnection", "sendEOF", S, params=("channel",)),
    Need("SSHConnection", "sendClose", S, params=("channel",)),
    # -- the TCP write path (sftpd/ssh/sockwrite.py): tcp.Connection internals -----------
    Need("tcp.Connection", "socket", SW, kind="instance"),
    Need("tcp.Connection", "_tempDataLen", SW, kind="instance"),
    Need("tcp.Connection", "offset", SW, kind="instance"),
    Need("tcp.Connection", "dataBuffer", SW, kind="instance"),
    Need("tcp.Connection", "connected", SW, kind="instance"),
    Need("tcp.Connection", "disconnecting", SW, kind="instance"),
    Need("tcp.Connection", "_writeDisconnected", SW, kind="instance"),
    Need("tcp.Connection", "_aborting", SW, kind="instance"),
    Need("tcp.Connection", "writeSequence", SW, params=("iovec",)),
    # "nothing queued" is exactly: no _tempDataLen and dataBuffer sent up to offset
    Need("tcp.Connection", "writeSequence", SW, "source", pattern=r"self\._tempDataLen \+="),
    Need("tcp.Connection", "doWrite", SW, "source", pattern=r"self\.offset"),
    # -- the reactor (sftpd/runtime/reactor.py): EPollReactor.doPoll replaced --------------------
    Need("EPollReactor", "doPoll", R, params=("timeout",)),
    Need("EPollReactor", "doIteration", R),
    Need("EPollReactor", "_doReadOrWrite", R, params=("selectable", "fd", "event")),
    Need("EPollReactor", "_selectables", R, kind="instance"),
    Need("EPollReactor", "_poller", R, kind="instance"),
    Need(
        "EPollReactor",
        "doPoll",
        R,
        "source",
        pattern=r"self\._poller\.poll\(timeout, len\(self\._selectables\)\)",
    ),
    # -- the rsync bridge (sftpd/apps/rsync/bridge.py): Process beyond IProcessTransport --------
    Need("Process", "pauseProducing", RS, params=()),
    Need("Process", "resumeProducing", RS, params=()),
    Need(
        "Process",
        "registerProducer",
        RS,
        params=("producer", "streaming"),
    ),
    Need("Process", "unregisterProducer", RS, params=()),
    Need("ProcessProtocol", "outReceived", RS, params=("data",)),
    # -- the network edge (sftpd/edge/): PROXY headers parsed by Twisted's own parsers --
    Need("haproxy._v1parser", "V1Parser", EP),
    Need("haproxy._v2parser", "V2Parser", EP),
    Need("haproxy._exceptions", "InvalidProxyHeader", EP),
    Need("Protocol", "connectionMade", EP, params=()),
    Need("Protocol", "dataReceived", EP, params=("data",)),
    Need("Protocol", "connectionLost", EG, params=("reason",)),
    Need("Protocol", "makeConnection", EG, params=("transport",)),
    Need("ServerFactory", "buildProtocol", EG, params=("addr",)),  # None refuses at accept
    Need("ServerFactory", "doStart", EG, params=()),
    Need("ServerFactory", "doStop", EG, params=()),
    Need("ServerFactory", "logPrefix", EG, params=()),
    # -- the event sinks (sftpd/events/) ------------------------------------------------
    Need("ProcessProtocol", "connectionMade", HK, params=()),
    Need("ProcessProtocol", "processExited", HK, params=("reason",)),
    Need("Resource", "__init__", MT, params=()),
    Need("Resource", "isLeaf", MT),
    Need("ProcessProtocol", "errReceived", RS, params=("data",)),
    Need("ProcessProtocol", "processEnded", RS, params=("reason",)),
    Need("ProcessProtocol", "childDataReceived", RS, params=("childFD", "data")),
    Need("ProcessProtocol", "childConnectionLost", RS, params=("childFD",)),
)

# ---- real instances, for the attributes Twisted sets in __init__ or at run time --------


def _transport() -> Any:
    t = conch_transport.SSHServerTransport()
    t.makeConnection(StringTransport())  # version line, KEXINIT: the exchange is running
    return t


def _transport_in_gex() -> Any:
    t = _transport()
    t.g, t.p = _kex.getDHGeneratorAndPrime(b"diffie-hellman-group14-sha1")
    t._startEphemeralDH()  # what Conch does when it sends the group
    return t


def _tcp() -> Iterator[Any]:
    a, b = socket.socketpair()
    try:
        yield tcp.Connection(a, None, MemoryReactorClock())  # type: ignore[no-untyped-call]
    finally:
        a.close()
        b.close()


def _reactor() -> Iterator[Any]:
    r = epollreactor.EPollReactor()
    try:
        yield r
    finally:
        r._poller.close()


def _channel() -> Any:
    return channel.SSHChannel(
        localWindow=1, localMaxPacket=1, remoteWindow=1, remoteMaxPacket=1, conn=None, data=b""
    )


def _ciphers() -> Any:
    return conch_transport.SSHCiphers(b"none", b"none", b"none", b"none")


INSTANCES: dict[str, Callable[[], Any]] = {
    "SSHTransportBase": _transport,
    "SSHCiphers": _ciphers,
    "SSHConnection": connection.SSHConnection,
    "ConchUser": conch_avatar.ConchUser,
    "SSHChannel": _channel,
    "tcp.Connection": _tcp,
    "EPollReactor": _reactor,
    "SSHPrivateKey": lambda: credentials.SSHPrivateKey(b"u", b"ssh-ed25519", b"k", b"d", None),
    "UsernamePassword": lambda: credentials.UsernamePassword(b"u", b"p"),
}
INSTANCE_FOR = {"dhSecretKey": _transport_in_gex}  # set only in a group exchange

# ---- the check -------------------------------------------------------------------------


def _gone(need: Need, what: str = "renamed/removed") -> str:
    return (
        f"Twisted {twisted.__version__} {what} `{need.label}`; see {need.where}"
        " (tests/test_conch_contract.py lists what sftpd relies on)"
    )


def _params(fn: Any) -> tuple[str, ...]:
    names = list(inspect.signature(fn).parameters)
    return tuple(names[1:] if names[:1] == ["self"] else names)


def _source(fn: Any) -> str:
    return inspect.getsource(inspect.unwrap(fn))


def problem(need: Need, obtain: Callable[[Need], Any] | None = None) -> str | None:
    """What is wrong with ``need`` in the installed Twisted (None: nothing)."""
    owner = OWNERS[need.owner]
    if need.kind == "instance":
        with _instance(need, obtain) as obj:
            return None if hasattr(obj, need.name) else _gone(need, "no longer sets")
    if not hasattr(owner, need.name):
        return _gone(need)
    value = inspect.getattr_static(owner, need.name)
    if need.kind == "source":
        if not re.search(need.pattern, _source(getattr(owner, need.name))):
            return _gone(need, f"changed (no longer matches {need.pattern!r})")
        return None
    if need.params is not None:
        fn = value.fget if isinstance(value, property) else getattr(owner, need.name)
        got = _params(fn)
        if got != need.params:
            return _gone(need, f"changed the parameters {need.params} -> {got} of")
    return None


class _instance:
    """A real instance for an "instance" need (cleaned up after)."""

    def __init__(self, need: Need, obtain: Callable[[Need], Any] | None) -> None:
        make = INSTANCE_FOR.get(need.name) or INSTANCES[need.owner]
        self._made: Any = obtain(need) if obtain is not None else make()
        self._gen = self._made if isinstance(self._made, types.GeneratorType) else None

    def __enter__(self) -> Any:
        return next(self._gen) if self._gen is not None else self._made

    def __exit__(self, *exc: object) -> None:
        if self._gen is not None:
            self._gen.close()


# ---- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("need", NEEDS, ids=[f"{n.label}:{n.kind}" for n in NEEDS])
def test_twisted_still_has(need: Need) -> None:
    message = problem(need)
    assert message is None, message


def test_table_covers_every_private_twisted_import() -> None:
    """Any twisted.* private module (a name starting with "_") imported by sftpd is one
    whose names the table lists: today only twisted.conch.ssh._kex."""
    from tests.test_import_direction import GRAPH

    private = {
        imp.target
        for imports in GRAPH.values()
        for imp in imports
        if imp.target.startswith("twisted.")
        and any(p.startswith("_") for p in imp.target.split("."))
    }
    listed = {
        OWNERS[n.owner].__name__ for n in NEEDS if isinstance(OWNERS[n.owner], types.ModuleType)
    }
    assert private <= listed, f"private Twisted modules without an entry: {private - listed}"


def test_table_covers_every_guarded_channel_message() -> None:
    from sftpd.ssh.connection import Connection

    ours = [c for c in Connection.__mro__ if c.__module__.startswith("sftpd.")]
    guarded = {
        name
        for cls in ours
        for name, value in vars(cls).items()
        if name.startswith("ssh_CHANNEL_") and name != "ssh_CHANNEL_DATA" and callable(value)
    }
    assert guarded == set(GUARDED)


# ---- the checks can fail -----------------------------------------------------------------


def _defining_classes(owner: Any, name: str) -> list[Any]:
    return [c for c in getattr(owner, "__mro__", (owner,)) if name in vars(c)]


@pytest.mark.parametrize("need", NEEDS, ids=[f"{n.label}:{n.kind}" for n in NEEDS])
def test_a_missing_or_changed_name_is_reported(need: Need, monkeypatch: pytest.MonkeyPatch) -> None:
    """Take each name away (or change it) as a Twisted release could; the check says so."""
    owner = OWNERS[need.owner]
    obtain = None
    if need.kind == "instance":

        def obtain(n: Need) -> Any:
            made = (INSTANCE_FOR.get(n.name) or INSTANCES[n.owner])()
            obj = next(made) if isinstance(made, types.GeneratorType) else made
            if isinstance(made, types.GeneratorType):
                made.close()  # clean up first: it may need the name taken away below
            obj.__dict__.pop(n.name, None)
            for cls in _defining_classes(type(obj), n.name):
                monkeypatch.delattr(cls, n.name)
            return obj

        expected = "no longer sets"
    elif need.kind == "source":

        def stand_in(self: Any, *args: Any, **kwargs: Any) -> None:
            """A rewritten method that no longer does what sftpd relies on."""

        monkeypatch.setattr(owner, need.name, stand_in)
        expected = "changed (no longer matches"
    elif need.params is not None:

        def other(self: Any, renamed: Any = None) -> None:
            """A method whose parameters changed."""

        monkeypatch.setattr(owner, need.name, other)
        expected = "changed the parameters"
    else:
        for cls in _defining_classes(owner, need.name):
            monkeypatch.delattr(cls, need.name)
        expected = "renamed/removed"
    message = problem(need, obtain)
    assert message is not None and expected in message, message
    assert message.startswith(f"Twisted {twisted.__version__} ")
    assert f"`{need.label}`; see {need.where}" in message


def test_every_where_is_a_module() -> None:
    """The table's pointers stay true when modules move (update ``where`` with them)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    missing = sorted({n.where for n in NEEDS if not (root / n.where).is_file()})
    assert not missing, f"NEEDS points at modules that do not exist: {missing}"


def _overrides() -> Iterator[tuple[type, str]]:
    """(sftpd class, name) for each name an sftpd class defines over a Twisted base's."""
    import importlib

    from tests.test_import_direction import MODULES

    for module_name in MODULES:
        if module_name.endswith(".__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module_name:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("twisted.")]
            for name in vars(cls):
                if name.startswith("__") and name != "__init__":
                    continue
                if any(name in vars(b) for b in bases):
                    yield cls, name


def test_table_covers_every_override_of_a_twisted_name() -> None:
    """Each name an sftpd class overrides or sets over a Twisted class is in NEEDS (with
    the Twisted class it comes from, or a base of it): a new override needs an entry."""
    listed = {(OWNERS[n.owner], n.name) for n in NEEDS}
    missing = sorted(
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, name in _overrides()
        if not any((base, name) in listed for base in cls.__mro__)
    )
    assert not missing, "overrides of Twisted names not in NEEDS:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize(
    ("dropped", "test", "named"),
    [
        (("SSHTransportBase", "sendPacket"), "override", "ServerTransport.sendPacket"),
        (("EPollReactor", "doPoll"), "override", "LeanEPollReactor.doPoll"),
        (("SSHConnection", "ssh_CHANNEL_EOF"), "override", "_ChannelGuard.ssh_CHANNEL_EOF"),
        (("_kex", "getSupportedKeyExchanges"), "private", None),
    ],
)
def test_the_coverage_checks_fail_for_a_missing_entry(
    monkeypatch: pytest.MonkeyPatch, dropped: tuple[str, str], test: str, named: str | None
) -> None:
    """Drop entries from NEEDS: the coverage tests notice (a new override needs an entry)."""
    owner = OWNERS[dropped[0]]
    kept = tuple(n for n in NEEDS if (n.owner, n.name) != dropped)
    if test == "private":  # every _kex entry, then the module is not listed at all
        kept = tuple(n for n in NEEDS if OWNERS[n.owner] is not owner)
    monkeypatch.setattr(sys.modules[__name__], "NEEDS", kept)
    check = {
        "override": test_table_covers_every_override_of_a_twisted_name,
        "private": test_table_covers_every_private_twisted_import,
    }[test]
    with pytest.raises(AssertionError) as info:
        check()
    assert named is None or named in str(info.value)
