"""The names of the event model (operations, protocols, outcomes, JSON keys); imports nothing.

Kept apart from :mod:`sftpd.events.model` so the config parser can check names without
importing the logging or Twisted.
"""

from __future__ import annotations

OPERATIONS = (
    "upload",
    "download",
    "delete",
    "rename",
    "mkdir",
    "rmdir",
    "login",
    "login_failed",
    "session",
    # The network edge (client = the source; user, session and path empty): a source
    # banned (denied, reason score or manual), its first refused connection per ban
    # (denied, reason banned), the ban's end (ok).
    "ban",
    "refused",
    "unban",
)
EDGE_OPERATIONS = ("ban", "refused", "unban")
PROTOCOLS = ("ssh", "sftp", "scp", "rsync", "hashes")
OUTCOMES = ("ok", "denied", "error", "incomplete")
# The order of the JSON keys (and the names of the SFTPD_* variables, upper-cased).
KEYS = (
    "time",
    "op",
    "user",
    "auth",
    "protocol",
    "client",
    "session",
    "path",
    "target",
    "bytes",
    "size",
    "duration",
    "outcome",
    "reason",
    "sha256",
)
