"""[audit], [metrics], [hook_limits] and [[hooks]]: parsed values and errors naming file and key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sftpd.config.values import Values
from sftpd.events.config import AuditConfig, EventsConfig, HookConfig, HookLimits, parse_events


def parse(text: str, base: Path) -> tuple[EventsConfig, list[str]]:
    values = Values("sftpd.toml", base)
    config = parse_events(tomllib.loads(text), values)
    return config, [str(e) for e in values.errors]


def test_nothing_configured_is_off(tmp_path: Path) -> None:
    config, errors = parse("[server]\nworkers = 2\n", tmp_path)
    assert errors == [] and config == EventsConfig() and not config.enabled


def test_the_example_of_the_issue(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    config, errors = parse(
        """
[audit]
file = "log/audit.jsonl"
[metrics]
listen = "127.0.0.1:9100"
[hook_limits]
max_parallel = 2
queue_size = 10
[[hooks]]
on = ["upload", "download", "delete", "rename", "mkdir", "rmdir", "login", "login_failed"]
command = ["/usr/local/bin/ingest", "--fast"]
timeout = 30
paths = ["/incoming/*"]
[[hooks]]
on = ["upload"]
url = "http://127.0.0.1:8080/hook"
outcomes = ["ok", "incomplete"]
""",
        tmp_path,
    )
    assert errors == []
    assert config.audit == AuditConfig(file=tmp_path / "log" / "audit.jsonl")
    assert config.metrics_listen == ("127.0.0.1", 9100)
    assert config.hook_limits == HookLimits(2, 10)
    assert config.hooks[0] == HookConfig(
        on=("upload", "download", "delete", "rename", "mkdir", "rmdir", "login", "login_failed"),
        command=("/usr/local/bin/ingest", "--fast"),
        timeout=30.0,
        paths=("/incoming/*",),
    )
    assert config.hooks[1].url == "http://127.0.0.1:8080/hook"
    assert config.hooks[1].outcomes == ("ok", "incomplete") and config.hooks[1].timeout == 30
    assert config.enabled


def test_audit_to_server_log(tmp_path: Path) -> None:
    config, errors = parse('[audit]\nfile = "-"\n', tmp_path)
    assert errors == [] and config.audit == AuditConfig(to_log=True)


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ('[audit]\nfile = "nodir/a.jsonl"', "audit.file", "does not exist"),
        ("[audit]\nfile = 3", "audit.file", "expected a non-empty string"),
        ('[audit]\nfiel = "a"', "audit.fiel", 'did you mean "file"'),
        ("audit = 1", "audit", "expected a table"),
        ('[metrics]\nlisten = "localhost:9100"', "metrics.listen", "cannot parse"),
        ('[metrics]\nlisten = ["127.0.0.1:1"]', "metrics.listen", "non-empty string"),
        ("[hook_limits]\nmax_parallel = 0", "hook_limits.max_parallel", "from 1 to 256"),
        ('[[hooks]]\ncommand = ["/bin/true"]', "hooks[0].on", "missing"),
        ('[[hooks]]\non = ["upload"]', "hooks[0]", "exactly one of command"),
        (
            '[[hooks]]\non = ["upload"]\ncommand = ["/bin/true"]\nurl = "http://h/"',
            "hooks[0]",
            "exactly one of command",
        ),
        ('[[hooks]]\non = ["uplaod"]\ncommand = ["/bin/true"]', "hooks[0].on[0]", "unknown"),
        ('[[hooks]]\non = []\ncommand = ["/bin/true"]', "hooks[0].on", "empty list"),
        ('[[hooks]]\non = ["upload"]\ncommand = ["true"]', "hooks[0].command", "absolute"),
        ('[[hooks]]\non = ["upload"]\ncommand = []', "hooks[0].command", "absolute"),
        ('[[hooks]]\non = ["upload"]\nurl = "ftp://h/x"', "hooks[0].url", "http://"),
        (
            '[[hooks]]\non = ["upload"]\ncommand = ["/bin/true"]\ntimeout = 0',
            "hooks[0].timeout",
            "number of seconds",
        ),
        (
            '[[hooks]]\non = ["upload"]\ncommand = ["/bin/true"]\npaths = ["in/*"]',
            "hooks[0].paths[0]",
            "not absolute",
        ),
        (
            '[[hooks]]\non = ["upload"]\ncommand = ["/bin/true"]\noutcomes = ["fine"]',
            "hooks[0].outcomes[0]",
            "unknown",
        ),
        (
            '[[hooks]]\non = ["upload"]\ncommand = ["/bin/true"]\ncmd = 1',
            "hooks[0].cmd",
            "unknown key",
        ),
        ("hooks = 1", "hooks", "array of tables"),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    config, errors = parse(text, tmp_path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"sftpd.toml: {key}: "), errors
    assert expected in errors[0]
    assert config.hooks == ()


def test_every_problem_is_reported(tmp_path: Path) -> None:
    _, errors = parse(
        '[audit]\nfile = 1\n[metrics]\nlisten = "x"\n[[hooks]]\non = ["upload"]\n', tmp_path
    )
    assert [e.split(":")[1].strip() for e in errors] == ["audit.file", "metrics.listen", "hooks[0]"]


def test_config_example_documents_every_key() -> None:
    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    section = text[text.index("# --- Audit, events and metrics") :]
    for table in ("[audit]", "[metrics]", "[hook_limits]", "[[hooks]]"):
        assert f"# {table}\n" in section
    keys = ["file", "listen", "max_parallel", "queue_size"]
    keys += ["on", "command", "url", "timeout", "paths", "outcomes"]
    for key in keys:
        assert f"\n# {key} = " in section, key
    assert set(HookConfig.__dataclass_fields__) <= set(keys)
    assert set(HookLimits.__dataclass_fields__) <= set(keys)


def test_parser_imports_no_twisted() -> None:
    # The config layer imports no Twisted; the lead moves this parser next to it.
    code = (
        "import sys, sftpd.events.config; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('twisted', 'prometheus_client')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
