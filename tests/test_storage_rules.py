"""The rules layer: delegation is complete, every operation obeys the rules, modes applied once."""

from __future__ import annotations

import errno
import inspect
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from sftpd.apps.rsync.bridge import make_rsync_app
from sftpd.storage.base import File, Storage
from sftpd.storage.delegate import DelegatingFile, DelegatingStorage
from sftpd.storage.enforce import RulesFile, RulesStorage
from sftpd.storage.local import LocalStorage
from sftpd.storage.permissions import Table, expand
from sftpd.storage.rules import (
    READ_OPS,
    WRITE_OPS,
    Op,
    RsyncGrant,
    RsyncRefusal,
    RuleDenied,
    Rules,
    incoming_chmod,
)
from tests.exec_fs import RecordingIO, make_ctx

# ---- delegation ------------------------------------------------------------------------


def contract_methods(protocol: type) -> set[str]:
    """The public methods a Protocol declares (its own and its bases', not object's)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or klass.__name__ == "Generic":
            continue
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    return names


def missing_forwarders(protocol: type, delegate: type) -> set[str]:
    return {n for n in contract_methods(protocol) if n not in vars(delegate)}


def test_the_delegates_forward_the_whole_contract() -> None:
    assert contract_methods(File) >= {"pread", "pwrite", "chmod", "close_nowait"}
    assert contract_methods(Storage) >= {"open", "rename", "copy_range", "close"}
    assert missing_forwarders(File, DelegatingFile) == set()
    assert missing_forwarders(Storage, DelegatingStorage) == set()


def test_a_method_added_to_the_contract_is_noticed() -> None:
    class Grown(Storage, Protocol):
        def quota(self, path: str) -> int: ...

    assert missing_forwarders(Grown, DelegatingStorage) == {"quota"}


class Recorder:
    """Answers every method by recording (name, args, kwargs) and returning a token."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return ("result", name)

        return method


def dummy_call(fn: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = ("kw", p.name)
        else:
            args.append(("arg", i))
    return tuple(args), kwargs


@pytest.mark.parametrize(
    ("protocol", "delegate"), [(File, DelegatingFile), (Storage, DelegatingStorage)]
)
def test_every_method_reaches_the_inner_object_with_its_arguments(
    protocol: type, delegate: type
) -> None:
    for name in sorted(contract_methods(protocol)):
        inner = Recorder()
        wrapper = delegate(inner)
        args, kwargs = dummy_call(getattr(protocol, name))
        assert getattr(wrapper, name)(*args, **kwargs) in (("result", name), None), name
        assert inner.calls == [(name, args, kwargs)], name


# ---- decisions -------------------------------------------------------------------------


def test_every_operation_under_read_only_and_by_default() -> None:
    assert READ_OPS | WRITE_OPS == set(Op) and len(Op) == 12
    ro, rw = Rules(read_only=True), Rules()
    for op in Op:
        assert rw.allows(op, "/x") and rw.decide(op, "/x") is None
        assert ro.allows(op, "/x") == (op in (Op.LIST, Op.DOWNLOAD)), op
    with pytest.raises(RuleDenied) as caught:
        ro.check(Op.DELETE_FILES, "/in/f")
    denied = caught.value
    assert isinstance(denied, PermissionError) and denied.errno == errno.EACCES
    assert denied.strerror == denied.reason  # the client sees the rule
    assert (denied.op, denied.path, denied.rule) == (Op.DELETE_FILES, "/in/f", "read_only")
    assert denied.reason == 'permission denied: "delete_files" is not allowed in /in/f (read_only)'
    assert ro.read_only_at("/") and not rw.read_only_at("/")


def test_rules_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Rules().read_only = True  # type: ignore[misc]


def test_modes() -> None:
    rules = Rules(umask=0o027)
    assert rules.create_mode(0o7777) == 0o750
    assert rules.create_mode(0o666) == 0o640
    assert rules.chmod_mode(0o7777) == 0o777  # an explicit chmod: no umask, no setuid


# ---- RulesStorage over the real jail ---------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    top = tmp_path / "root"
    top.mkdir()
    (top / "f").write_bytes(b"keep")
    (top / "d").mkdir()
    (top / "link").symlink_to("f")
    old = os.umask(0)  # the rules' umask is the one under test
    try:
        yield top
    finally:
        os.umask(old)


def snapshot(top: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        out[str(p.relative_to(top))] = (st.st_mode, data)
    return out


def storage(root: Path, rules: Rules) -> RulesStorage:
    return RulesStorage(LocalStorage(root), rules)


def test_read_only_refuses_every_change_and_changes_nothing(root: Path) -> None:
    s = storage(root, Rules(read_only=True))
    before = snapshot(root)
    reader = s.open("/f", os.O_RDONLY, 0)
    changes = {
        "open write": lambda: s.open("/f", os.O_WRONLY, 0),
        "open rdwr": lambda: s.open("/f", os.O_RDWR, 0),
        "open create": lambda: s.open("/new", os.O_WRONLY | os.O_CREAT, 0o644),
        "open rdonly create": lambda: s.open("/new", os.O_RDONLY | os.O_CREAT, 0o644),
        "open trunc": lambda: s.open("/f", os.O_RDONLY | os.O_TRUNC, 0),
        "open append": lambda: s.open("/f", os.O_WRONLY | os.O_APPEND, 0),
        "open_nowait write": lambda: s.open_nowait("/f", os.O_RDWR, 0),
        "truncate": lambda: s.truncate("/f", 0),
        "chmod": lambda: s.chmod("/f", 0o600),
        "lchmod": lambda: s.chmod("/link", 0o600, follow=False),
        "utime": lambda: s.utime("/f", 1, 1),
        "remove": lambda: s.remove("/f"),
        "remove missing": lambda: s.remove("/missing"),
        "mkdir": lambda: s.mkdir("/nd", 0o755),
        "rmdir": lambda: s.rmdir("/d"),
        "rename": lambda: s.rename("/f", "/g", overwrite=False),
        "rename missing": lambda: s.rename("/missing", "/g", overwrite=False),
        "posix-rename": lambda: s.rename("/f", "/d/f", overwrite=True),
        "symlink": lambda: s.symlink("f", "/l2"),
        "link": lambda: s.link("/f", "/hard"),
        "pwrite": lambda: reader.pwrite(b"x", 0),
        "pwrite_nowait": lambda: reader.pwrite_nowait(b"x", 0),
        "ftruncate": lambda: reader.truncate(0),
        "fchmod": lambda: reader.chmod(0o600),
        "futime": lambda: reader.utime(1, 1),
        "copy_range": lambda: s.copy_range(reader, 0, 0, reader, 4),
    }
    for what, change in changes.items():
        with pytest.raises(RuleDenied) as caught:
            change()
        assert caught.value.rule == "read_only", what
    # reads pass
    assert reader.pread(10, 0) == b"keep"
    assert s.stat("/f").st_size == 4 and s.readlink("/link") == "f"
    assert s.realpath("/link") == "/f" and s.statvfs("/").f_bsize > 0
    listing = s.opendir("/")
    assert {name for name, _ in listing.read(100)} >= {"f", "d", "link"}
    listing.close()
    reader.close()
    assert snapshot(root) == before


def test_umask_and_setuid_are_applied_once_in_the_layer(root: Path) -> None:
    s = storage(root, Rules(umask=0o027))
    s.open("/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o7777).close()
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o750
    s.mkdir("/nd", 0o7777)
    assert stat.S_IMODE((root / "nd").stat().st_mode) == 0o750
    s.chmod("/new", 0o6777)  # SETSTAT: permission bits as asked, setuid/setgid dropped
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o777
    existing = s.open("/f", os.O_RDWR | os.O_CREAT, 0o7777)  # exists: its mode is kept
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o644
    existing.chmod(0o4755)  # FSETSTAT, scp -p
    existing.close()
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o755


class Partial(Rules):
    """Rules refusing exactly ``denied`` (what issue 13's tables will produce)."""

    def __init__(self, *denied: Op, where: str = "/", dependent: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "denied", frozenset(denied))
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "dependent", dependent)

    def decide(self, op: Op, path: str) -> str | None:
        inside = path == self.where or path.startswith(self.where.rstrip("/") + "/")
        return "test" if op in self.denied and inside else None  # type: ignore[attr-defined]

    @property
    def path_dependent(self) -> bool:
        return bool(self.dependent)  # type: ignore[attr-defined]


def test_upload_without_overwrite_is_decided_atomically_by_the_kernel(root: Path) -> None:
    s = storage(root, Partial(Op.OVERWRITE))
    s.open("/new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644).close()
    assert (root / "new").exists()
    with pytest.raises(RuleDenied) as caught:
        s.open("/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert caught.value.op is Op.OVERWRITE
    with pytest.raises(FileExistsError):  # the client's own O_EXCL keeps its answer
        s.open("/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    (root / "g").write_bytes(b"other")
    with pytest.raises(RuleDenied):
        s.rename("/g", "/f", overwrite=True)  # posix-rename over an existing file
    s.rename("/g", "/h", overwrite=True)
    assert (root / "f").read_bytes() == b"keep" and (root / "h").read_bytes() == b"other"


def test_overwrite_without_upload(root: Path) -> None:
    s = storage(root, Partial(Op.UPLOAD))
    s.open("/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644).close()
    with pytest.raises(RuleDenied) as caught:
        s.open("/new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert caught.value.op is Op.UPLOAD and not (root / "new").exists()
    with pytest.raises(RuleDenied):
        s.link("/f", "/hard")


def test_rename_is_judged_by_kind_and_at_both_ends(root: Path) -> None:
    s = storage(root, Partial(Op.RENAME_DIRS))
    s.rename("/f", "/g", overwrite=False)
    with pytest.raises(RuleDenied) as caught:
        s.rename("/d", "/e", overwrite=False)
    assert caught.value.op is Op.RENAME_DIRS
    (root / "in").mkdir()
    s = storage(root, Partial(Op.RENAME_FILES, where="/in"))
    with pytest.raises(RuleDenied):
        s.rename("/g", "/in/g", overwrite=False)
    assert (root / "g").exists()


def test_path_dependent_rules_judge_the_path_the_jail_resolves(root: Path) -> None:
    (root / "ok").mkdir()
    (root / "denied").mkdir()
    (root / "denied" / "secret").write_bytes(b"s")
    (root / "ok" / "link").symlink_to("../denied")
    s = storage(root, Partial(Op.DOWNLOAD, Op.LIST, where="/denied", dependent=True))
    with pytest.raises(RuleDenied) as caught:
        s.open("/ok/link/secret", os.O_RDONLY, 0)
    assert caught.value.path == "/denied/secret"
    with pytest.raises(RuleDenied):
        s.opendir("/ok/link")
    assert s.judged("/ok/link", follow=False) == "/ok/link"  # lstat-like calls: the link
    s.opendir("/ok").close()


def test_files_opened_through_the_layer_are_rules_files(root: Path) -> None:
    f = storage(root, Rules()).open("/f", os.O_RDONLY, 0)
    assert isinstance(f, RulesFile) and f.path == "/f" and not f.writable
    f.close()


# ---- the rsync capability --------------------------------------------------------------


def test_rsync_is_granted_with_the_modes_and_the_umask(tmp_path: Path) -> None:
    grant = Rules().rsync(tmp_path)
    assert grant == RsyncGrant(tmp_path, receive=True, incoming_chmod="ug-s,a-t,g-w,o-w")
    ro = Rules(read_only=True, umask=0o077).rsync(tmp_path)
    assert isinstance(ro, RsyncGrant) and ro.sender_only
    assert ro.incoming_chmod == "ug-s,a-t,g-rwx,o-rwx"
    assert incoming_chmod(0) == "ug-s,a-t"
    assert incoming_chmod(0o752) == "ug-s,a-t,u-rwx,g-rx,o-w"


def test_rules_that_rsync_cannot_obey_refuse_it(tmp_path: Path) -> None:
    class Unexpressible(Rules):
        def rsync_refusal(self) -> str | None:
            return "per-directory permissions"

    assert Unexpressible().rsync(tmp_path) == RsyncRefusal("per-directory permissions")
    ctx = make_ctx(tmp_path)
    ctx = type(ctx)(**{**vars(ctx), "rsync": RsyncRefusal("per-directory permissions")})
    io = RecordingIO()
    make_rsync_app([b"rsync", b"--server", b"-r", b".", b"x"], ctx, io)
    assert io.status == 1
    assert bytes(io.stderr) == b"sftpd: rsync refused: per-directory permissions\n"


def test_a_session_without_a_grant_runs_no_rsync(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx = type(ctx)(**{k: v for k, v in vars(ctx).items() if k != "rsync"})
    assert isinstance(ctx.rsync, RsyncRefusal)


@pytest.mark.parametrize(
    "rules",
    [
        Rules(),
        Rules(read_only=True),
        Rules(table=Table.build([("/", ["*"])])),
        Rules(table=Table.build([("/", ["*"]), ("/in", ["list", "upload"])])),
        Rules(table=Table.build([("/", ["list", "download", "upload"])])),
        Rules(key_permissions=expand(["*"])),
        Rules(key_permissions=expand(["list", "upload"])),
        Rules(deny_files=("*.exe",)),
        Rules(hide_files=(".*",)),
    ],
)
def test_unrestricted_rules_skip_the_lookup_and_mean_it(rules: Rules) -> None:
    """The default rules answer without a lookup per request; the shortcut holds only
    where every operation is allowed at every path."""
    paths = ["/", "/a", "/in/x", "/x.exe", "/.hidden"]
    rules.__dict__["unrestricted"] = False  # the full lookup, for what it decides
    everything = all(rules.decide(op, path) is None for op in Op for path in paths)
    del rules.__dict__["unrestricted"]
    assert rules.unrestricted == everything
    assert Rules().unrestricted
