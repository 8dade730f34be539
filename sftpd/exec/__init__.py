"""Exec requests: shell-free command parsing, scp, rsync and hash commands."""
