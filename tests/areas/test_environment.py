"""env/variables: parsing a guest's `env -0`, storing, and the profile script a checkout
writes, which must never turn an entry's names into shell code."""

from __future__ import annotations

import subprocess

from vml.environment import decode_variables, diff_environment, encode_variables, parse_env_output, profile_script


def test_env_records_with_newlines_and_bash_functions():
    output = b"PATH=/usr/bin\0BASH_FUNC_module%%=() {  eval `modulecmd bash $*`\n}\0NOTE=two\nlines\0SSH_CONNECTION=x\0PWD=/root\0"
    variables = parse_env_output(output)
    assert variables == {"PATH": "/usr/bin", "BASH_FUNC_module%%": "() {  eval `modulecmd bash $*`\n}", "NOTE": "two\nlines"}
    assert decode_variables(encode_variables(variables)) == variables


def test_profile_script_exports_only_shell_names_and_quotes_values(tmp_path):
    hostile = {"X;touch /tmp/pwned;Y": "1", "GOOD": "it's $(rm -rf /) `x`", "BASH_FUNC_f%%": "() { :; }"}
    script = profile_script(decode_variables(encode_variables(hostile))).decode()
    assert "touch" not in script and "BASH_FUNC" not in script
    path = tmp_path / "env.sh"
    path.write_text(script)
    shown = subprocess.run(["sh", "-c", f'. {path}; printf %s "$GOOD"'], capture_output=True, text=True, check=True)
    assert shown.stdout == "it's $(rm -rf /) `x`"


def test_variable_changes():
    old = {"env/variables": encode_variables({"A": "1", "B": "2"})}
    new = {"env/variables": encode_variables({"A": "1", "B": "3", "C": "4"}), "env/history": b"ls\n"}
    changes = [(c.path, c.status, c.old, c.new) for c in diff_environment(old, new)]
    assert changes == [("env/variables:B", "M", "2", "3"), ("env/variables:C", "A", None, "4"), ("env/history", "A", None, "ls\n")]
