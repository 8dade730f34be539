"""The SFTP protocol layer: sans-IO codec, request handler and Twisted glue."""
