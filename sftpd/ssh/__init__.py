"""SSH transport pieces sftpd adds to Conch: algorithm policy, AEAD, EtM, strict KEX."""
