"""Imports point one way: each layer of sftpd imports only what the table below allows."""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---- the rules (update these when modules move) ---------------------------------------
#
# Each layer: which modules belong to it (fnmatch patterns on dotted names), which sftpd
# modules they may import (prefixes: "sftpd.storage" allows sftpd.storage and
# sftpd.storage.*, not sftpd.storage_x; None: any), and which outside packages they must
# not import, directly or through any sftpd module they import (``transitive``).
# A module in several layers obeys every one of them.

TWISTED = ("twisted", "zope")  # zope.interface comes with Twisted and is its interface layer
SANS_IO = (
    "sftpd.apps.sftp.codec",
    "sftpd.apps.sftp.attrs",
    "sftpd.apps.sftp.messages",
    "sftpd.apps.sftp.constants",
    "sftpd.apps.scp.proto",
    "sftpd.apps.rsync.args",
    "sftpd.apps.rsync.opening",
    "sftpd.apps.rsync.daemonlog",
    "sftpd.apps.cmdline",
    "sftpd.storage.vpath",
    "sftpd.config",
    "sftpd.config.*",
    "sftpd.events.config",
    "sftpd.events.names",
)
SHARED = ("sftpd.errors", "sftpd.log")  # every layer may raise our errors and log
# The edge's config dataclasses and checks: Twisted-free, read by the config loader and
# carried by the User record (per-user max_sessions, allowed_sources); and what a ban is,
# which the database ban store keeps.
EDGE_CONFIG = (
    "sftpd.edge.bans",
    "sftpd.edge.config",
    "sftpd.edge.limits",
    "sftpd.edge.networks",
)  # every layer may raise our errors and log


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]
    may_import: tuple[str, ...] | None
    never: tuple[str, ...] = ()
    transitive: bool = False
    why: str = ""


LAYERS = (
    Layer(
        "storage",
        modules=("sftpd.storage", "sftpd.storage.*"),
        may_import=("sftpd.storage", "sftpd.errors"),
        never=TWISTED,
        transitive=True,
        why="storage knows no protocol, no SSH, no authentication and no Twisted",
    ),
    Layer(
        "sans-io",
        modules=SANS_IO,
        may_import=None,
        never=TWISTED,
        transitive=True,
        why="sans-IO code parses and builds bytes; it runs without a reactor",
    ),
    Layer(
        "apps",
        modules=("sftpd.apps", "sftpd.apps.*"),
        may_import=(
            "sftpd.apps",
            "sftpd.storage",
            "sftpd.runtime.threads",
            "sftpd.config",
            *SHARED,
        ),
        why="apps see the channel/app contract (apps.contract) and storage, "
        "never SSH or auth internals",
    ),
    Layer(
        "auth",
        modules=("sftpd.auth", "sftpd.auth.*"),
        may_import=(
            "sftpd.auth",
            "sftpd.apps.contract",
            "sftpd.storage",
            "sftpd.runtime.threads",
            "sftpd.config",
            "sftpd.ssh.hostkeys",
            *EDGE_CONFIG,
            *SHARED,
        ),
        why="who may log in: the user store, checkers, realm and avatar; the SSH layer "
        "(but for key fingerprints) is the assembly's to wire in",
    ),
    Layer(
        "runtime",
        modules=("sftpd.runtime", "sftpd.runtime.*"),
        may_import=("sftpd.runtime", "sftpd.config", *SHARED),
        why="how the process runs: it knows no protocol",
    ),
    Layer(
        "ssh",
        modules=("sftpd.ssh", "sftpd.ssh.*"),
        may_import=(
            "sftpd.ssh",
            "sftpd.apps.contract",
            "sftpd.apps.dispatch",
            "sftpd.apps.sftp.protocol",
            "sftpd.edge.alive",
            "sftpd.edge.config",
            "sftpd.runtime",
            "sftpd.config",
            *SHARED,
        ),
        why="the SSH layer routes a session to an app by its contract; it never reaches "
        "into an app's internals, storage or the user store",
    ),
    Layer(
        "edge",
        modules=("sftpd.edge", "sftpd.edge.*"),
        may_import=("sftpd.edge", "sftpd.config", *SHARED),
        why="the edge decides at accept; its bans and refusals flow out through on_event "
        "(the assembly wires it to the events) and its bans to a BanStore it is given: it "
        "imports neither the events, the user store nor the SSH layer",
    ),
    Layer(
        "events",
        modules=("sftpd.events", "sftpd.events.*"),
        may_import=("sftpd.events", "sftpd.storage", "sftpd.config", *SHARED),
        why="events flow into the sinks from the layers that report them; nothing flows "
        "back: the events import no edge, SSH, auth or app module",
    ),
    Layer(
        "config",
        modules=("sftpd.config", "sftpd.config.*"),
        may_import=(
            "sftpd.config",
            "sftpd.errors",
            *EDGE_CONFIG,
            "sftpd.events.config",
            "sftpd.events.names",
        ),
        why="the configuration model depends on nothing else in sftpd but the Twisted-free "
        "config checks of the edge and the events sections, which the loader merges in",
    ),
)

# Imports that break a rule today, each with the reason it is tolerated. The test fails
# when one of them is gone (delete it here) as well as for any import not listed.
KNOWN: dict[tuple[str, str], str] = {
    ("sftpd.config.values", "sftpd.storage.vpath"): (
        "config checks home directories with vpath.normalize (sans-IO, no Twisted); "
        "move normalize where config may import it, or allow it in LAYERS"
    ),
    ("sftpd.config.access", "sftpd.storage.permissions"): (
        "config checks permission names and glob patterns with the rules' own sans-IO "
        "definitions, so check-config and the rules can never disagree"
    ),
}

# The package root is importable from everywhere: it holds only __version__ (checked below).
ROOT_PACKAGE = "sftpd"

# ---- reading the imports ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sftpd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    target: str  # dotted module name
    line: int
    how: str  # the statement, for the message


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@functools.cache
def _is_module(name: str) -> bool:
    """Whether ``name`` (outside sftpd) is a module: ``from a import b`` may import one."""
    if _under(name, "sftpd"):
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imports_of(module: str) -> Iterator[Import]:
    """Every import in ``module``, at any depth (functions, ``if TYPE_CHECKING``, ...),
    plus ``importlib.import_module``-style calls naming an sftpd module in a literal."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in MODULES or _is_module(sub) else base
                yield Import(
                    target,
                    node.lineno,
                    f"from {'.' * node.level}{node.module or ''} import {alias.name}",
                )
        elif isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value in MODULES
            ):
                yield Import(first.value, node.lineno, f"dynamic import of {first.value!r}")


GRAPH = {module: list(imports_of(module)) for module in MODULES}


def _in_layer(module: str, layer: Layer) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in layer.modules)


def _where(module: str, imp: Import) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{imp.line}: {imp.how}"


def violations(layer: Layer) -> list[str]:
    """One line per import that breaks ``layer``'s rule, naming module and import."""
    out: list[str] = []
    for module in sorted(m for m in MODULES if _in_layer(m, layer)):
        for imp in GRAPH[module]:
            if (module, imp.target) in KNOWN or imp.target == ROOT_PACKAGE:
                continue
            if _under(imp.target, "sftpd"):
                if layer.may_import is not None and not any(
                    _under(imp.target, p) for p in layer.may_import
                ):
                    out.append(f"{module} imports {imp.target} ({_where(module, imp)})")
            elif any(_under(imp.target, p) for p in layer.never):
                out.append(f"{module} imports {imp.target} ({_where(module, imp)})")
        if layer.transitive and layer.never:
            chain = _reaches(module, layer.never)
            if chain is not None and len(chain) > 2:
                out.append(f"{module} imports {chain[-1]} through " + " -> ".join(chain[1:-1]))
    return out


def _reaches(start: str, never: tuple[str, ...]) -> list[str] | None:
    """The shortest import chain from ``start`` to a module under ``never`` (or None)."""
    seen = {start}
    paths = [[start]]
    while paths:
        nxt = []
        for path in paths:
            for imp in GRAPH.get(path[-1], ()):
                if any(_under(imp.target, p) for p in never):
                    return [*path, imp.target]
                if imp.target in MODULES and imp.target not in seen:
                    seen.add(imp.target)
                    nxt.append([*path, imp.target])
        paths = nxt
    return None


# ---- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
def test_layer_imports_only_what_it_may(layer: Layer) -> None:
    members = [m for m in MODULES if _in_layer(m, layer)]
    assert members, f"layer {layer.name}: no module matches {layer.modules}; update LAYERS"
    bad = violations(layer)
    assert not bad, f"layer {layer.name} ({layer.why}):\n  " + "\n  ".join(bad)


def test_known_exceptions_still_occur() -> None:
    stale = [
        f"{module} -> {target}"
        for module, target in KNOWN
        if not any(imp.target == target for imp in GRAPH.get(module, ()))
    ]
    assert not stale, "no longer imported; delete from KNOWN: " + ", ".join(stale)


def test_package_root_imports_nothing() -> None:
    assert GRAPH[ROOT_PACKAGE] == [], "sftpd/__init__.py must stay import-free: " + ", ".join(
        imp.how for imp in GRAPH[ROOT_PACKAGE]
    )


# ---- the checks can fail ---------------------------------------------------------------

LAYER = {layer.name: layer for layer in LAYERS}


@pytest.mark.parametrize(
    ("layer", "module", "target", "expected"),
    [
        (
            "storage",
            "sftpd.storage.local",
            "sftpd.apps.sftp.handler",
            "imports sftpd.apps.sftp.handler",
        ),
        ("storage", "sftpd.storage.files", "sftpd.ssh.transport", "imports sftpd.ssh.transport"),
        ("storage", "sftpd.storage.rules", "sftpd.auth.users", "imports sftpd.auth.users"),
        ("storage", "sftpd.storage.base", "twisted.internet.defer", "imports twisted.internet"),
        ("storage", "sftpd.storage.local", "sftpd.errors", None),
        ("sans-io", "sftpd.apps.sftp.codec", "twisted.internet", "imports twisted.internet"),
        ("sans-io", "sftpd.apps.cmdline", "sftpd.runtime.threads", "through sftpd.runtime.threads"),
        ("sans-io", "sftpd.config.model", "zope.interface", "imports zope.interface"),
        ("apps", "sftpd.apps.scp.sink", "sftpd.ssh.transport", "imports sftpd.ssh.transport"),
        ("apps", "sftpd.apps.sftp.handler", "sftpd.auth.realm", "imports sftpd.auth.realm"),
        ("apps", "sftpd.apps.sftp.protocol", "sftpd.ssh.channel", "imports sftpd.ssh.channel "),
        ("apps", "sftpd.apps.rsync.bridge", "sftpd.apps.contract", None),
        ("config", "sftpd.config.model", "sftpd.assembly", "imports sftpd.assembly"),
        ("config", "sftpd.config.values", "sftpd.errors", None),
    ],
)
def test_a_bad_import_is_named(
    monkeypatch: pytest.MonkeyPatch, layer: str, module: str, target: str, expected: str | None
) -> None:
    """Each rule catches an import it forbids (added to the graph here), naming the module
    and the import; an allowed one passes."""
    assert violations(LAYER[layer]) == []
    monkeypatch.setitem(GRAPH, module, [*GRAPH[module], Import(target, 1, f"import {target}")])
    found = violations(LAYER[layer])
    if expected is None:
        assert found == []
    else:
        # (the same import may also show up through the modules that import ``module``)
        assert any(line.startswith(module + " ") and expected in line for line in found), found


def test_imports_are_read_at_every_depth() -> None:
    cli = {imp.target for imp in GRAPH["sftpd.cli"]}
    assert "sftpd.assembly" in cli  # imported inside a function
    dispatch = {imp.target for imp in GRAPH["sftpd.apps.dispatch"]}
    assert "sftpd.apps.rsync.bridge" in dispatch  # imported by name (importlib)
    assert _resolve("sftpd.apps.sftp.codec", False, 1, "attrs") == "sftpd.apps.sftp.attrs"
    assert _resolve("sftpd.apps.sftp", True, 3, "errors") == "sftpd.errors"
