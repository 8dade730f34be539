"""rrsync forced commands as key profiles: the option grammar, the permissions, the rooted grant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sftpd.apps.rsync.rooted import RootMissing, in_directory, prepare, temporaries_in_directory
from sftpd.apps.rsync.sandbox import ROOT_FD, Runtime, RuntimeCache, sandbox_argv
from sftpd.apps.rsync.stop import Temporary
from sftpd.auth.forced import with_key_options
from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.keyopts import ForcedCommand, KeyOptions, OptionError, parse_command
from sftpd.config.model import ExecConfig
from sftpd.contexts import exec_settings, rules_for
from sftpd.storage.rules import RsyncGrant, RsyncRefusal


def key(command: str, **kw: object) -> AuthorizedKey:
    return AuthorizedKey(b"blob", options=KeyOptions(command=parse_command(command)), **kw)  # type: ignore[arg-type]


def test_rrsync_flags() -> None:
    assert parse_command("rrsync -no-del -no-overwrite -no-lock /b/") == ForcedCommand(
        frozenset({"rsync"}), directory="/b", no_delete=True, no_overwrite=True
    )
    with pytest.raises(OptionError, match="'-munge' is not supported"):
        parse_command("rrsync -munge /x")
    with pytest.raises(OptionError, match="one directory"):
        parse_command("rrsync -ro")


def _profile(command: str, **kw: object) -> tuple[User, AuthorizedKey]:
    user, k = with_key_options(User("a", Path("/nonexistent")), key(command, **kw))
    assert k is not None
    return user, k


def test_rrsync_key_serves_rsync_only_rooted_at_dir() -> None:
    user, k = _profile("rrsync -ro /pub")
    assert k.protocols == ("rsync",) and k.home == "/"
    cfg = exec_settings(ExecConfig(), user, k)
    assert (cfg.allow_rsync, cfg.allow_scp, cfg.allow_hashes) == (True, False, False)
    grant = rules_for(user, k, umask=0o022).rsync(user.root)
    assert isinstance(grant, RsyncGrant) and grant.sender_only


def test_rrsync_flags_narrow_and_never_widen() -> None:
    _, k = _profile("rrsync -wo /in")
    assert "download" not in (k.permissions or ()) and "overwrite" not in (k.permissions or ())
    grant = rules_for(User("a", Path("/x")), k, umask=0o022).rsync(Path("/x"))
    assert isinstance(grant, RsyncGrant)
    assert grant.receive and not grant.send and not grant.overwrite and grant.delete
    _, k = _profile("rrsync -no-del /in")
    grant = rules_for(User("a", Path("/x")), k, umask=0o022).rsync(Path("/x"))
    assert isinstance(grant, RsyncGrant) and grant.send and grant.receive and not grant.delete
    # a key profile that already refuses rsync or download keeps refusing them
    _, k = _profile("rrsync /in", protocols=("sftp",))
    assert k.protocols == ()
    _, k = _profile("rrsync /in", permissions=("list", "upload", "create_dirs"))
    assert set(k.permissions or ()) == {"list", "upload", "create_dirs"}
    grant = rules_for(User("a", Path("/x")), k, umask=0o022).rsync(Path("/x"))
    assert isinstance(grant, RsyncGrant) and not grant.send
    _, k = _profile("rrsync -ro /in", permissions=("upload", "create_dirs"))
    assert isinstance(rules_for(User("a", Path("/x")), k, umask=0).rsync(Path("/x")), RsyncRefusal)


def test_internal_sftp_still_maps_onto_the_user() -> None:
    user, k = with_key_options(User("a", Path("/x")), key("internal-sftp -R"))
    assert user.read_only and user.allow_exec is False and k is not None and k.protocols is None


def test_rooted_grant_opens_dir_through_the_jail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "pub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink("/pub", root / "abs")  # resolves inside the root
    os.symlink("../../outside", root / "pub" / "out")  # climbs: stays in the root
    runtime = Runtime(files=(), disable_userns=False)
    cache = RuntimeCache(lambda bwrap, rsync: runtime)
    for directory, expected in (("/pub", root / "pub"), ("/abs", root / "pub")):
        grant = RsyncGrant(root, receive=False, incoming_chmod="", directory=directory)
        prepared = prepare(cache, grant, "/bin/true", "/bin/true")
        assert prepared.root_fd is not None
        assert os.readlink(f"/proc/self/fd/{prepared.root_fd}") == str(expected)
        prepared.close()
    for directory, why in (("/pub/out", "does not exist"), ("/nothing", "does not exist")):
        grant = RsyncGrant(root, receive=False, incoming_chmod="", directory=directory)
        with pytest.raises(RootMissing, match=f"rrsync directory {directory} {why}"):
            prepare(cache, grant, "/bin/true", "/bin/true")
    assert prepare(cache, None, "/bin/true", "/bin/true").root_fd is None


def test_sandbox_binds_the_fd_not_a_path() -> None:
    runtime = Runtime(files=(), disable_userns=False)
    argv = sandbox_argv("bwrap", "/usr/bin/rsync", runtime, b"/srv/x", True, root_fd=ROOT_FD)
    at = argv.index(b"--ro-bind-fd")
    assert argv[at + 1 : at + 3] == [str(ROOT_FD).encode(), b"/jail"] and b"/srv/x" not in argv
    argv = sandbox_argv("bwrap", "/usr/bin/rsync", runtime, b"/srv/x", False, root_fd=ROOT_FD)
    assert b"--bind-fd" in argv


def test_names_rsync_reports_are_mapped_below_dir() -> None:
    grant = RsyncGrant(Path("/r"), receive=True, incoming_chmod="", directory="/in")
    assert in_directory(grant, b"d/f") == b"/in/d/f"
    assert in_directory(grant, b"d/") == b"/in/d/"
    assert in_directory(grant, b"../x") == b"/in/x"
    assert in_directory(None, b"d/f") == b"d/f"
    temps = {Temporary("/d/.f.XYZ", 1, 2)}
    assert temporaries_in_directory(grant, temps) == {Temporary("/in/d/.f.XYZ", 1, 2)}
