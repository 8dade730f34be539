"""The HTTP POST of an HTTP hook, with twisted.web's Agent on an injected reactor."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class _Body:
    """The whole JSON body, written at once (no cooperator, so no global reactor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data) if data else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def agent_post(reactor: Any) -> Any:
    """A ``post(url, body, timeout) -> Deferred[status]`` for :class:`~sftpd.events.hooks.Hooks`."""
    agent = Agent(reactor)  # type: ignore[no-untyped-call]
    headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"sftpd-hook"]})

    def post(url: str, body: bytes, timeout: float) -> defer.Deferred[int]:
        d: defer.Deferred[Any] = agent.request(b"POST", url.encode("utf-8"), headers, _Body(body))

        def got(response: Any) -> defer.Deferred[int]:
            return readBody(response).addCallback(lambda _: int(response.code))

        d.addCallback(got)
        d.addTimeout(timeout, reactor)
        return d

    return post
