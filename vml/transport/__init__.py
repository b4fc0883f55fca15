"""Transports: how vml reaches the files of another repository (a local path, SFTP over SSH)."""
