"""keyboard-interactive conversation: exact RFC 4256 bytes and strict response parsing."""

from __future__ import annotations

import pytest
from twisted.cred.credentials import IUsernamePassword

from sftpd.auth.kbdint import (
    Conversation,
    IKeyboardInteractiveCredentials,
    KbdIntError,
    KeyboardInteractiveCredentials,
    Prompt,
    encode_info_request,
    parse_info_response,
    parse_request_data,
)

# name "", instruction "", language "", 1 prompt, "Password: ", echo false
PASSWORD_REQUEST = (
    b"\0\0\0\0" + b"\0\0\0\0" + b"\0\0\0\0" + b"\0\0\0\x01" + b"\0\0\0\x0aPassword: " + b"\x00"
)
CODE_REQUEST = b"\0\0\0\0" * 3 + b"\0\0\0\x01" + b"\0\0\0\x13Verification code: " + b"\x00"


def response(*answers: bytes) -> bytes:
    out = len(answers).to_bytes(4, "big")
    for a in answers:
        out += len(a).to_bytes(4, "big") + a
    return out


def test_password_then_code() -> None:
    c = Conversation(b"alice", totp=True)
    assert c.start() == PASSWORD_REQUEST
    assert c.receive(response(b"s3cret")) == CODE_REQUEST
    creds = c.receive(response(b"123456"))
    assert creds == KeyboardInteractiveCredentials(b"alice", b"s3cret", b"123456")
    assert IKeyboardInteractiveCredentials.providedBy(creds)
    assert not IUsernamePassword.providedBy(creds)  # a plain password checker never gets it


def test_password_only_without_totp() -> None:
    c = Conversation(b"bob", totp=False)
    assert c.start() == PASSWORD_REQUEST
    assert c.receive(response(b"pw")) == KeyboardInteractiveCredentials(b"bob", b"pw", None)


def test_empty_and_non_utf8_answers_are_kept_as_bytes() -> None:
    c = Conversation(b"bob", totp=False)
    c.start()
    assert c.receive(response(b"\xff\x00")) == KeyboardInteractiveCredentials(
        b"bob", b"\xff\x00", None
    )


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (response(), "0 responses to 1 prompts"),
        (response(b"a", b"b"), "2 responses to 1 prompts"),
        (response(b"a") + b"\x00", "1 trailing bytes"),
        (b"\0\0\0\x01\0\0\0\x05ab", "truncated"),
        (b"\0\0", "truncated"),
        (b"", "truncated"),
    ],
)
def test_malformed_responses_fail_and_end_the_conversation(payload: bytes, words: str) -> None:
    c = Conversation(b"alice", totp=True)
    c.start()
    with pytest.raises(KbdIntError, match=words):
        c.receive(payload)
    with pytest.raises(KbdIntError, match="without a pending"):
        c.receive(response(b"s3cret"))


def test_response_out_of_turn() -> None:
    c = Conversation(b"alice", totp=False)
    with pytest.raises(KbdIntError, match="without a pending"):
        c.receive(response(b"x"))
    c = Conversation(b"alice", totp=False)
    c.start()
    c.receive(response(b"x"))
    with pytest.raises(KbdIntError, match="without a pending"):
        c.receive(response(b"x"))
    with pytest.raises(KbdIntError, match="already started"):
        c.start()


def test_encode_with_name_instruction_and_echo() -> None:
    data = encode_info_request((Prompt("a", echo=True), Prompt("b")), "N", "I")
    assert data == (
        b"\0\0\0\x01N" + b"\0\0\0\x01I" + b"\0\0\0\0" + b"\0\0\0\x02"
        b"\0\0\0\x01a\x01" + b"\0\0\0\x01b\x00"
    )


def test_parse_info_response_several() -> None:
    assert parse_info_response(response(b"x", b""), 2) == (b"x", b"")


def test_request_data() -> None:
    assert parse_request_data(b"\0\0\0\0\0\0\0\x03pam") == (b"", b"pam")
    with pytest.raises(KbdIntError):
        parse_request_data(b"\0\0\0\0\0\0\0\x03pam!")
    with pytest.raises(KbdIntError):
        parse_request_data(b"\0\0\0\0")
