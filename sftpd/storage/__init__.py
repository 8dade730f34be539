"""Jailed storage: the one place file-system calls happen."""
