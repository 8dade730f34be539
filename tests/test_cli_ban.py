"""`sftpd ban list|add|remove`: what reaches the bans table, exit codes and messages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sftpd.auth.stores.bans import BanDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.cli import main
from sftpd.cli_ban import TICK_SECONDS
from sftpd.edge.defender import TICK

HASH = "$2b$04$3n1a2oxP7bIYJt/eQTWRbOW3VAwP7YeMwzK8.7yCG7xKXj1M2H2oi"


def write(path: Path, extra: str = "", db: bool = True) -> Path:
    text = '[server]\nhost_keys_dir = "keys"\n'
    text += '[users_db]\nurl = "sqlite:users.db"\n' if db else ""
    text += extra + f'[[users]]\nname = "u"\nroot = "files"\npassword_hash = "{HASH}"\n'
    path.write_text(text)
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return write(tmp_path / "sftpd.toml", "[defender]\nban_time = 10\nban_time_max = 100\n")


def run(args: list[str], conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["ban", *args, "--config", str(conf)])
    out, err = capsys.readouterr()
    return code, out, err


def table(conf: Path) -> BanDb:
    return BanDb(SqliteDatabase(conf.parent / "users.db"))


def test_add_list_remove(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["add", "192.0.2.7", "--minutes", "2.5"], conf, capsys)
    assert code == 0 and "banned 192.0.2.7 until " in out and "within 5 s" in out
    (ban,) = table(conf).all()
    assert ban.reason == "manual" and ban.count == 1
    assert ban.until == pytest.approx(time.time() + 150, abs=5)
    code, out, _ = run(["add", "2001:db8:1:2::99"], conf, capsys)  # default: ban_time
    assert code == 0 and "2001:db8:1:2::/64" in out and "(10 min)" in out
    code, out, _ = run(["list"], conf, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["SOURCE", "UNTIL", "LEFT", "BANS", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ["192.0.2.7", "2001:db8:1:2::/64"]
    code, out, _ = run(["list", "--json"], conf, capsys)
    got = json.loads(out)
    assert code == 0 and [b["source"] for b in got] == ["192.0.2.7", "2001:db8:1:2::/64"]
    assert got[0]["count"] == 1 and got[0]["reason"] == "manual"
    assert 140 < got[0]["seconds_left"] <= 150 and got[0]["until"].endswith("Z")
    code, out, _ = run(["remove", "2001:db8:1:2::/64"], conf, capsys)
    assert code == 0 and "lifted the ban on 2001:db8:1:2::/64" in out
    code, out, _ = run(["remove", "192.0.2.7/32"], conf, capsys)
    assert code == 0 and table(conf).all() == []
    code, out, _ = run(["list"], conf, capsys)
    assert code == 0 and out == "no bans in force\n"
    assert run(["list", "--json"], conf, capsys)[1].strip() == "[]"


def test_a_repeated_admin_ban_counts_as_a_repeat(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["add", "192.0.2.7"], conf, capsys)[0] == 0
    assert run(["add", "192.0.2.7"], conf, capsys)[0] == 0
    (ban,) = table(conf).all()
    assert ban.count == 2  # the defender doubles its next ban of this source from here


def test_without_users_db_says_where_bans_live(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(tmp_path / "plain.toml", db=False)
    for args in (["list"], ["add", "192.0.2.7"], ["remove", "192.0.2.7"]):
        code, out, err = run(args, conf, capsys)
        assert code == 2 and out == ""
        assert f"sftpd ban {args[0]}: {conf} has no [users_db]" in err
        assert "the bans live in the running server's memory only" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "10.0.0.0/8"], "for whole networks use [defender] block_list"),
        (["add", "example.com"], "'example.com' is not a source; expected an IP address"),
        (["remove", "2001:db8::/48"], "is not a source"),
        (["remove", "192.0.2.9"], "sftpd ban remove: no ban on 192.0.2.9"),
    ],
)
def test_bad_sources_exit_2(
    conf: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(args, conf, capsys)
    assert code == 2 and out == "" and message in err


@pytest.mark.parametrize("minutes", ["0", "-1", "525601", "soon"])
def test_bad_minutes_exit_2(conf: Path, capsys: pytest.CaptureFixture[str], minutes: str) -> None:
    code, _, err = run(["add", "192.0.2.7", "--minutes", minutes], conf, capsys)
    assert code == 2 and "--minutes" in err
    assert not (conf.parent / "users.db").exists() or table(conf).all() == []


def test_add_with_the_defender_off_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write(tmp_path / "off.toml", "[defender]\nenabled = false\n")
    code, _, err = run(["add", "192.0.2.7"], conf, capsys)
    assert code == 2 and "[defender] enabled = false" in err
    assert table(conf).all() == []


def test_help_and_the_tick_it_promises(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "sftpd ban add" in capsys.readouterr().out
    for action in ("list", "add", "remove"):
        assert main(["ban", action, "--help"]) == 0
        assert f"usage: sftpd ban {action}" in capsys.readouterr().out
    assert TICK_SECONDS == TICK
