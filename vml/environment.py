"""The user's environment in an entry: `env/` in its git tree.

- `env/variables`: the login shell's environment variables, one `NAME=value` per line,
  sorted, with `\\` and newlines escaped; variables of the session itself (SSH_*, PWD...)
  are left out.
- `env/history`: the user's shell history.
- `env/dotfiles/PATH`: the dotfiles of root's and each user's home that the area's rules
  select (their content is also in the file tree; here they read and diff like text).

A checkout brings variables back through a profile script every login shell sources.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from vml.objects.manifest import KIND_DIR, KIND_FILE, Listing
from vml.objects.store import ChunkStore
from vml.objects.walk import node_at, read_content

VARIABLES = "env/variables"
HISTORY = "env/history"
COMPARED = (VARIABLES, HISTORY)  # what status and diff compare (dotfiles show as files already)
DOTFILES = "env/dotfiles/"
PROFILE_SCRIPT = "etc/profile.d/vml-environment.sh"  # relative to the area's top
DOTFILE_LIMIT = 1024 * 1024
# What belongs to one session or one login, not to the environment a user set up.
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SESSION_VARIABLES = frozenset({
    "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK", "PWD", "OLDPWD", "SHLVL", "_",
    "XDG_SESSION_ID", "XDG_RUNTIME_DIR", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS", "MOTD_SHOWN",
    "HOME", "USER", "LOGNAME", "SHELL", "MAIL", "TERM", "COLUMNS", "LINES",
})


def parse_env_output(text: bytes) -> dict[str, str]:
    """`env -0`'s output: NAME=value records separated by NUL (values may hold newlines;
    names may be bash's exported functions, BASH_FUNC_name%%, kept but never exported)."""
    variables: dict[str, str] = {}
    decoded = text.decode("utf-8", "surrogateescape")
    for record in decoded.split("\0" if "\0" in decoded else "\n"):  # a guest whose env lacks -0: lines
        name, equals, value = record.partition("=")
        if equals and name and "\n" not in name and name not in SESSION_VARIABLES:
            variables[name] = value
    return variables


def encode_variables(variables: dict[str, str]) -> bytes:
    lines = [f"{name}={value.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}" for name, value in sorted(variables.items())]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape") if lines else b""


def decode_variables(data: bytes | None) -> dict[str, str]:
    variables = {}
    for line in (data or b"").decode("utf-8", "surrogateescape").splitlines():
        name, equals, value = line.partition("=")
        if not equals or not name:
            continue
        out, escaped = [], False
        for char in value:
            if escaped:
                out.append("\n" if char == "n" else char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        variables[name] = "".join(out)
    return variables


def profile_script(variables: dict[str, str]) -> bytes:
    """A script for /etc/profile.d that sets the entry's variables in every login shell.
    Only names a shell can export go in: a name is never code (entries come from others)."""
    lines = ["# Written by vml checkout: the environment variables of the entry checked out.", ""]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(variables.items()) if SHELL_NAME.fullmatch(name)]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def dotfiles(store: ChunkStore, load: Callable[..., Listing], root_id: bytes) -> dict[str, bytes]:
    """env/dotfiles/...: the regular dotfiles directly in root/ and in home/*/ of a saved tree."""
    found = {}
    homes = [b"root"]
    home = node_at(load, root_id, b"home")
    if home is not None and home.kind == KIND_DIR:
        homes += [b"home/" + node.name for node in load(home.tree).nodes if node.kind == KIND_DIR]
    for path in homes:
        node = node_at(load, root_id, path)
        if node is None or node.kind != KIND_DIR:
            continue
        for child in load(node.tree).nodes:
            if not (child.name.startswith(b".") and child.kind == KIND_FILE and child.size <= DOTFILE_LIMIT):
                continue
            try:
                name = (path + b"/" + child.name).decode("utf-8")
            except UnicodeDecodeError:
                continue  # git tree names must be text here; the file is in the saved tree anyway
            if child.name != b".git":  # git refuses a tree entry named .git
                found[DOTFILES + name] = read_content(store, child)
    return found


@dataclass(frozen=True, slots=True)
class EnvChange:
    path: str  # env/variables:NAME, env/history, env/dotfiles/...
    status: str  # A, D, M
    old: str | None
    new: str | None


def diff_environment(old: dict[str, bytes], new: dict[str, bytes]) -> list[EnvChange]:
    """Variable by variable, then the history and dotfiles as whole files."""
    changes = []
    old_vars, new_vars = decode_variables(old.get(VARIABLES)), decode_variables(new.get(VARIABLES))
    for name in sorted(old_vars.keys() | new_vars.keys()):
        before, after = old_vars.get(name), new_vars.get(name)
        if before != after:
            status = "A" if before is None else "D" if after is None else "M"
            changes.append(EnvChange(f"{VARIABLES}:{name}", status, before, after))
    for path in sorted((old.keys() | new.keys()) - {VARIABLES}):
        before, after = old.get(path), new.get(path)
        if before != after:
            status = "A" if before is None else "D" if after is None else "M"
            changes.append(EnvChange(path, status, _text(before), _text(after)))
    return changes


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")
