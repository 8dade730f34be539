"""The apps a session channel serves (SFTP, scp, rsync, hashes) and their contract."""
