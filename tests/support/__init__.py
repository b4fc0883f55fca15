"""Helpers the tests share: a real sshd, exhaustive tree comparison, repository files, killable vml processes."""
