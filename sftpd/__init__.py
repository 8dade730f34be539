"""sftpd: a jailed SFTP server on Twisted Conch."""

__version__ = "0.1.0"
