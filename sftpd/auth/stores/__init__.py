"""User stores in a database (SQLite, PostgreSQL) behind the seam of ``sftpd.auth.users``."""
