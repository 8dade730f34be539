"""keyboard-interactive (RFC 4256), server side: a sans-IO prompt/response conversation.

The conversation asks for the password and then, when the user has a TOTP secret, for
``Verification code: ``, one prompt per SSH_MSG_USERAUTH_INFO_REQUEST as OpenSSH's PAM
does (clients show each prompt as it comes). Both answers are collected before anything
is checked, so the second prompt says nothing about the first answer; the result is a
``KeyboardInteractiveCredentials`` for the cred checker, which checks the password as
the password method does (bcrypt off the reactor thread, dummy hash for unknown users)
and then the code. Only this auth module imports Twisted (for the cred interface).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import ICredentials
from zope.interface import Attribute, implementer

from sftpd.auth.wire import Reader, WireError, string, u32
from sftpd.errors import SftpdError

MSG_USERAUTH_INFO_REQUEST = 60
MSG_USERAUTH_INFO_RESPONSE = 61
METHOD = b"keyboard-interactive"

PASSWORD_PROMPT = "Password: "
CODE_PROMPT = "Verification code: "


class KbdIntError(SftpdError):
    """A keyboard-interactive message that breaks the protocol: the attempt fails."""


class IKeyboardInteractiveCredentials(ICredentials):  # type: ignore[misc]
    """A password, and a one-time code when one was asked for."""

    username = Attribute("The user name (bytes, as sent by the client).")
    password = Attribute("The answer to the password prompt (bytes).")
    code = Attribute("The answer to the verification code prompt (bytes), or None.")


@implementer(IKeyboardInteractiveCredentials)
@dataclass(frozen=True)
class KeyboardInteractiveCredentials:
    """What a finished conversation collected. Deliberately not IUsernamePassword: a
    checker for plain passwords must never accept it and skip the code."""

    username: bytes
    password: bytes
    code: bytes | None
    # (the store's answer,) when the user was looked up to start the conversation, so the
    # checker does not look again (one lookup per attempt); () when it was not.
    found: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Prompt:
    text: str
    echo: bool = False


def parse_request_data(data: bytes) -> tuple[bytes, bytes]:
    """The method fields of USERAUTH_REQUEST: (language tag, submethods), strictly."""
    r = Reader(data)
    try:
        language, submethods = r.string(), r.string()
        r.end()
    except WireError as e:
        raise KbdIntError(f"bad keyboard-interactive request ({e})") from None
    return language, submethods


def encode_info_request(
    prompts: tuple[Prompt, ...], name: str = "", instruction: str = ""
) -> bytes:
    """The payload of SSH_MSG_USERAUTH_INFO_REQUEST (without the message number)."""
    out = [string(name.encode()), string(instruction.encode()), string(b""), u32(len(prompts))]
    for p in prompts:
        out.append(string(p.text.encode()))
        out.append(b"\x01" if p.echo else b"\x00")
    return b"".join(out)


def parse_info_response(payload: bytes, expected: int) -> tuple[bytes, ...]:
    """The responses of SSH_MSG_USERAUTH_INFO_RESPONSE (payload without the message number).

    Exactly ``expected`` responses and nothing after them, else KbdIntError.
    """
    r = Reader(payload)
    try:
        count = r.u32()
        if count != expected:
            raise KbdIntError(f"{count} responses to {expected} prompts")
        answers = tuple(r.string() for _ in range(count))
        r.end()
    except WireError as e:
        raise KbdIntError(f"bad info response ({e})") from None
    return answers


class Conversation:
    """One keyboard-interactive attempt: ``start()``, then ``receive()`` per response.

    ``receive`` returns the next INFO_REQUEST payload to send, or the credentials when
    every prompt is answered. Any protocol error ends the conversation (KbdIntError);
    so does a new USERAUTH_REQUEST, which the caller handles by dropping this object.
    """

    def __init__(self, username: bytes, totp: bool, found: tuple[Any, ...] = ()) -> None:
        self._username = username
        self._found = found
        self._prompts = [Prompt(PASSWORD_PROMPT)] + ([Prompt(CODE_PROMPT)] if totp else [])
        self._answers: list[bytes] = []
        self._started = False
        self._done = False

    def start(self) -> bytes:
        if self._started:
            raise KbdIntError("conversation already started")
        self._started = True
        return encode_info_request((self._prompts[0],))

    def receive(self, payload: bytes) -> bytes | KeyboardInteractiveCredentials:
        if not self._started or self._done:
            self._done = True
            raise KbdIntError("info response without a pending info request")
        try:
            (answer,) = parse_info_response(payload, 1)
        except KbdIntError:
            self._done = True
            raise
        self._answers.append(answer)
        if len(self._answers) < len(self._prompts):
            return encode_info_request((self._prompts[len(self._answers)],))
        self._done = True
        code = self._answers[1] if len(self._answers) > 1 else None
        return KeyboardInteractiveCredentials(self._username, self._answers[0], code, self._found)
