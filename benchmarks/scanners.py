"""Secret scanners on the planted guest tree (issue 18): which planted secrets each finds,
per category and kind, how many benign files it flags, and its wall time.

The tree: tests/support/planted.py's guest (its secrets and its false-positive corpus), a
hand-made benign corpus beside it (hashes, ids, keywords and public keys where a physicist
keeps them), and the text files of whole installed distributions from a site-packages.

Scanners: detect-secrets (Yelp, through its Python API) and CredSweeper (Samsung, its CLI,
with its ML validation and without it), both from a separate venv (--scanner-venv);
gitleaks' default rule set read as data (benchmarks/data/gitleaks.toml, MIT, see
gitleaks.NOTICE) and run with Python's re; vml's content patterns alone (vml/scrub/patterns.py
as its content stage applies them to a file no path rule names); and vml itself: init,
commit, `vml publish`, `vml checkout public/main --to DIR`.

A scanner finds a planted secret when it flags the secret's file on a line the secret spans
(found raw, or base64, hex or UTF-16LE as planted.forms gives it; a flag naming only the
file, such as gitleaks' path rules, covers the whole of it). vml finds one when no form of it
is left anywhere in the restored public tree (gzip files opened). A false positive is a flag
on a benign file; for vml, a benign file not byte for byte the same after publishing.

Usage: .venv/bin/python benchmarks/scanners.py [--bulk-mb 10] [--only vml,gitleaks-rules,...]
       (the peers' venv, /work/scanner-venv by default, is made at the first run)
Writes benchmarks/results/<date>-scanners.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

from planted import CONTENT, Planted, edit_out_earlier, false_positive_corpus, forms, plant  # noqa: E402

VML = "/work/main/.venv/bin/vml"
GITLEAKS_TOML = os.path.join(HERE, "data", "gitleaks.toml")
SCANNERS = ("detect-secrets", "credsweeper", "credsweeper-no-ml", "gitleaks-rules", "vml-patterns", "vml")
WHOLE_FILE = 0  # the line of a flag that names the file only
TEXT_PROBE = 8192  # a file with a NUL byte in this many first bytes is binary (as vml and gitleaks judge)


@dataclass(slots=True)
class Run:
    """What one scanner said: flagged lines per file (relative path -> line numbers), its time."""

    flags: dict[str, set[int]] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    left: dict[int, list[str]] | None = None  # vml: a planted secret's index -> the public files still holding it
    changed: set[str] | None = None  # vml: benign files not byte-identical after publishing

    def flag(self, path: str, line: int) -> None:
        self.flags.setdefault(os.path.normpath(path), set()).add(line)


def relative(path: str) -> str:
    return os.path.normpath(path.lstrip("/"))


def planted_tree(top: str) -> tuple[list[Planted], list[str]]:
    """planted.py's guest as it is published (the secret edited out before is gone), and its
    false-positive corpus. Scanners read file content: secrets in symlink targets and xattrs are left out."""
    records = [record for record in plant(Path(top)) if not record.earlier and record.where == CONTENT]
    edit_out_earlier(Path(top))
    return records, [relative(path) for path in false_positive_corpus(Path(top))]


class Noise:
    """Random ids and hashes, from a seeded generator."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)

    def hex(self, size: int) -> str:
        return self.random.randbytes(size).hex()

    def b64(self, size: int) -> str:
        return base64.b64encode(self.random.randbytes(size)).decode()

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))


def benign_corpus(top: str, home: str = "data/phys", seed: int = 19) -> list[str]:
    """Write the hand-made benign files (a path the planted tree already has is left as it
    is); return their paths from the tree's top, with the user's public certificate."""
    s = Noise(seed)
    written: list[str] = [f"{home}/.globus/usercert.pem"] if os.path.exists(os.path.join(top, home, ".globus/usercert.pem")) else []

    def put(path: str, content: str | bytes) -> None:
        full = os.path.join(top, path)
        if os.path.exists(full):
            return
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as out:
            out.write(content.encode() if isinstance(content, str) else content)
        written.append(path)

    files = [{"_path": f"lib/python3.11/site-packages/numpy/core/{name}.py", "path_type": "hardlink", "sha256": s.hex(32), "size_in_bytes": 1000 + n}
             for n, name in enumerate(("numeric", "fromnumeric", "shape_base", "einsumfunc", "records"))]
    put("opt/conda/conda-meta/numpy-1.26.4-py311h64a7726_0.json", json.dumps({
        "build": "py311h64a7726_0", "channel": "https://conda.anaconda.org/conda-forge/linux-64", "name": "numpy", "version": "1.26.4",
        "md5": s.hex(16), "sha256": s.hex(32), "fn": "numpy-1.26.4-py311h64a7726_0.conda", "license": "BSD-3-Clause",
        "url": "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py311h64a7726_0.conda", "files": [f["_path"] for f in files],
        "paths_data": {"paths": files, "paths_version": 1}, "requested_spec": "numpy", "auth": None, "token": None}, indent=2) + "\n")
    record = "".join(f"requests/{name}.py,sha256={base64.urlsafe_b64encode(s.random.randbytes(32)).decode().rstrip('=')},{2000 + n}\n"
                     for n, name in enumerate(("__init__", "adapters", "api", "auth", "certs", "cookies", "sessions", "utils")))
    put(f"{home}/.local/lib/python3.11/site-packages/requests-2.31.0.dist-info/RECORD", record + "requests-2.31.0.dist-info/RECORD,,\n")
    put(f"{home}/bin/RECORD.txt", record)  # a copy outside site-packages, where path allowlists do not reach
    commits = [s.hex(20) for _ in range(6)]
    put(f"{home}/analysis/.git/packed-refs", "# pack-refs with: peeled fully-peeled sorted\n"
        + "".join(f"{c} refs/remotes/origin/{b}\n" for c, b in zip(commits, ("main", "dev", "fit-v2", "unblind", "tags/v1.0", "tags/v1.1"))))
    put(f"{home}/analysis/.git/ORIG_HEAD", commits[0] + "\n")
    put(f"{home}/analysis/.git/logs/HEAD", "".join(f"{a} {b} Physics Group <phys@example.org> {1700000000 + n} +0100\tcommit: fit {n}\n"
                                                   for n, (a, b) in enumerate(zip(["0" * 40, *commits], commits))))
    put(f"{home}/analysis/.git/config", "[core]\n\trepositoryformatversion = 0\n[remote \"origin\"]\n\turl = git@gitlab.example.org:phys/analysis.git\n"
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n")
    put(f"{home}/analysis/runs.csv", "run,uuid,events,status\n" + "".join(f"{357000 + n},{s.uuid()},{s.random.randint(10**5, 10**7)},ok\n" for n in range(40)))
    put("etc/libvirt/qemu/analysis-vm.xml", f"<domain type='kvm'>\n  <name>analysis-vm</name>\n  <uuid>{s.uuid()}</uuid>\n"
        "  <memory unit='KiB'>8388608</memory>\n  <devices>\n    <disk type='file' device='disk'>\n      <source file='/var/lib/libvirt/images/a.qcow2'/>\n"
        f"      <serial>{s.hex(10)}</serial>\n    </disk>\n  </devices>\n</domain>\n")
    put(f"{home}/analysis/fit.C", """// Fit the dimuon mass spectrum: ROOT macro
#include "TFile.h"
#include "TH1F.h"
#include "TKey.h"
#include "TF1.h"
#include "TCanvas.h"

void fit(const char* input = "dimuon_2024.root", const char* key_prefix = "hMass_")
{
   TFile* f = TFile::Open(input);
   TIter nextkey(f->GetListOfKeys());
   TKey* key = nullptr;
   while ((key = (TKey*)nextkey())) {
      TString name = key->GetName();
      if (!name.BeginsWith(key_prefix)) continue;
      auto* h = (TH1F*)key->ReadObj();
      TF1 model("model", "gaus(0)+pol2(3)", 60., 120.);
      model.SetParameters(1e4, 91.1876, 2.4952, 10., 0.1, 1e-3);
      h->Fit(&model, "RQ");
      const ULong64_t seed_hash = 0x9E3779B97F4A7C15ULL;
      printf("%s: mass = %.4f +- %.4f (seed %llx)\\n", name.Data(), model.GetParameter(1), model.GetParError(1), seed_hash);
   }
   gStyle->SetOptStat(0);
   auto* token_canvas = new TCanvas("c_token", "fit", 800, 600);
   token_canvas->SaveAs("fit.pdf");
}
""")
    put(f"{home}/.rootlogon.C", '{\n   gROOT->SetStyle("ATLAS");\n   gSystem->Load("libRooFit");\n'
        '   gEnv->SetValue("XNet.Secure", 1);\n   gEnv->SetValue("XSec.Pwd.AutoLogin", 0);\n}\n')
    put(f"{home}/.bashrc", """# .bashrc
[ -f /etc/bashrc ] && . /etc/bashrc
export HISTCONTROL=ignoreboth
export HISTSIZE=100000
export PATH=$HOME/.local/bin:$PATH
export SSH_AUTH_SOCK=$XDG_RUNTIME_DIR/ssh-agent.socket
export TOKENIZERS_PARALLELISM=false
export PASSWORD_STORE_DIR=$HOME/.pass
export X509_USER_PROXY=/tmp/x509up_u1001
export X509_CERT_DIR=/etc/grid-security/certificates
export BEARER_TOKEN_FILE=$XDG_RUNTIME_DIR/bt_u1001
export KRB5CCNAME=FILE:/tmp/krb5cc_1001
source /cvmfs/sft.cern.ch/lcg/views/LCG_105/x86_64-el9-gcc13-opt/setup.sh
alias voms='voms-proxy-init --voms cms --valid 192:00'
alias k='kinit phys@EXAMPLE.ORG'
# >>> conda initialize >>>
__conda_setup="$('/opt/conda/bin/conda' 'shell.bash' 'hook' 2> /dev/null)"
eval "$__conda_setup"
# <<< conda initialize <<<
""")
    hosts = []
    for n in range(12):
        salt, digest = s.b64(20), s.b64(20)
        hosts.append(f"|1|{salt}|{digest} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{s.b64(32)[:43]}")
        if n % 3 == 0:
            hosts.append(f"lxplus{n}.example.org,188.184.{n}.{n + 10} ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{s.b64(380)}")
    put(f"{home}/.ssh/known_hosts", "\n".join(hosts) + "\n")
    put(f"{home}/.ssh/config", "Host lxplus\n  HostName lxplus.example.org\n  User phys\n  IdentityFile ~/.ssh/id_ed25519\n"
        "  GSSAPIAuthentication yes\n  GSSAPIDelegateCredentials yes\n\nHost *\n  ServerAliveInterval 60\n")
    put(f"{home}/.ssh/id_ed25519.pub", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{s.b64(32)[:43]} phys@vm1\n")
    put("etc/pki/ca-trust/source/anchors/example-ca.pem", public_certificate())
    put(f"{home}/.gitconfig", "[user]\n\tname = Physics Group\n\temail = phys@example.org\n\tsigningkey = ~/.ssh/id_ed25519.pub\n"
        "[gpg]\n\tformat = ssh\n[credential]\n\thelper = cache --timeout=3600\n")
    put(f"{home}/.condarc", "channels:\n  - conda-forge\n  - defaults\nchannel_priority: strict\nssl_verify: true\n")
    put(f"{home}/analysis/auth.py", '"""Log in to the conditions database."""\nimport getpass\n\n\ndef connect(user: str, password_file: str = "~/.pgpass"):\n'
        '    password = getpass.getpass("Password: ")\n    token_url = "https://auth.example.org/token"\n'
        '    return Session(user=user, password=password, token_endpoint=token_url)\n')
    png = base64.b64encode(s.random.randbytes(3000)).decode()
    put(f"{home}/analysis/plots.ipynb", json.dumps({"cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": ["h.Draw()\n"],
                                                              "outputs": [{"output_type": "display_data", "data": {"image/png": png}, "metadata": {}}]}],
                                                   "nbformat": 4, "nbformat_minor": 5}, indent=1))
    put(f"{home}/webapp/package-lock.json", json.dumps({"name": "webapp", "lockfileVersion": 3, "packages": {
        f"node_modules/{name}": {"version": "1.0.0", "resolved": f"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",
                                 "integrity": "sha512-" + s.b64(64)} for name in ("left-pad", "chalk", "debug")}}, indent=2))
    put("etc/sssd/conf.d/krb5.conf", "[domain/example.org]\nid_provider = ldap\nauth_provider = krb5\nkrb5_realm = EXAMPLE.ORG\n"
        "ldap_default_authtok_type = obfuscated_password\ncache_credentials = True\n")
    put(f"{home}/.config/Code/User/keybindings.json", json.dumps([{"key": "ctrl+shift+down", "command": "editor.action.copyLinesDownAction"},
                                                                  {"key": "ctrl+k ctrl+t", "command": "workbench.action.selectTheme"}], indent=2))
    return written


def public_certificate() -> str:
    """A CA certificate from the host's trust store, else a fresh self-signed one."""
    for candidate in ("/etc/ssl/certs/ISRG_Root_X1.pem", "/etc/ssl/certs/DigiCert_Global_Root_G2.pem"):
        if os.path.exists(candidate):
            with open(candidate) as handle:
                return handle.read()
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "/dev/null",
                           "-subj", "/DC=org/DC=example/CN=Alice Physicist", "-days", "365"], capture_output=True, text=True, check=True)
    return made.stdout


def bulk_sample(top: str, source: str, megabytes: float) -> list[str]:
    """Text files of whole installed distributions (their RECORD lists them) copied from
    `source` (a site-packages) under opt/conda/lib/python3.11/site-packages, up to `megabytes`."""
    target = "opt/conda/lib/python3.11/site-packages"
    copied, size = [], 0
    for info in sorted(name for name in os.listdir(source) if name.endswith(".dist-info")):
        record = os.path.join(source, info, "RECORD")
        if info.startswith("vml-") or not os.path.exists(record):
            continue
        with open(record) as handle:
            names = [line.rsplit(",", 2)[0] for line in handle if line.strip()]
        for name in names:
            full = os.path.normpath(os.path.join(source, name))
            if not full.startswith(source + os.sep) or "__pycache__" in name or not os.path.isfile(full) or os.path.islink(full):
                continue
            with open(full, "rb") as handle:
                data = handle.read()
            if b"\0" in data[:TEXT_PROBE]:
                continue
            path = os.path.join(target, name)
            os.makedirs(os.path.join(top, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(top, path), "wb") as out:
                out.write(data)
            copied.append(path)
            size += len(data)
        if size >= megabytes * 1e6:
            break
    return copied


# ---------------------------------------------------------------------------------------
# Where a planted secret is, and whether a flag covers it


KEY_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?-----END[^\n]*|PuTTY-User-Key-File-.*?Private-MAC:[^\n]*", re.DOTALL)


def secret_lines(top: str, record: Planted) -> tuple[int, int] | None:
    """The first and last line of the secret in its file, raw or in any form planted.forms
    names (a docker password is there in base64), widened to the key block holding it (a
    scanner names a private key by its header line); None when it is in no plain form."""
    with open(os.path.join(top, relative(record.path)), "rb") as handle:
        data = handle.read()
    for needle in (needle for needles in forms(record.secret).values() for needle in needles):
        start = data.find(needle)
        if start >= 0:
            end = start + len(needle)
            for block in KEY_BLOCK.finditer(data):
                if block.start() <= start and end <= block.end():
                    start, end = block.span()
            return data.count(b"\n", 0, start) + 1, data.count(b"\n", 0, end) + 1
    return None


def found(run: Run, record: Planted, lines: tuple[int, int] | None) -> bool:
    """Whether the run flagged the secret's file on a line the secret spans (or the whole
    file; or, when the secret is not in the file in any plain form, anywhere in it)."""
    flagged = run.flags.get(relative(record.path), set())
    if not flagged:
        return False
    if lines is None or WHOLE_FILE in flagged:
        return True
    return any(lines[0] <= line <= lines[1] for line in flagged)


def regular_files(top: str) -> Iterable[str]:
    for directory, _dirs, names in os.walk(top):
        for name in sorted(names):
            full = os.path.join(directory, name)
            if os.path.isfile(full) and not os.path.islink(full):
                yield os.path.relpath(full, top)


# ---------------------------------------------------------------------------------------
# detect-secrets and CredSweeper, from their own venv

DETECT_SECRETS = """
import json, os, sys
from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings
os.chdir(sys.argv[1])
collection = SecretsCollection()
with default_settings():
    for path in sys.argv[2:]:
        collection.scan_file(path)
print(json.dumps({name: [[found.line_number, found.type] for found in secrets] for name, secrets in collection.data.items()}))
"""


def run_detect_secrets(tree: str, venv: str) -> Run:
    files = list(regular_files(tree))
    started = time.perf_counter()
    done = subprocess.run([os.path.join(venv, "bin", "python"), "-c", DETECT_SECRETS, tree, *files], capture_output=True, text=True, check=True)
    run = Run(seconds=time.perf_counter() - started, note=version(venv, "detect-secrets") + ": SecretsCollection.scan_file in default_settings()")
    for path, secrets in json.loads(done.stdout).items():
        for line, _kind in secrets:
            run.flag(path, line)
    return run


def run_credsweeper(tree: str, venv: str, scratch: str, ml: bool) -> Run:
    report = os.path.join(scratch, f"credsweeper-{'ml' if ml else 'no-ml'}.json")
    argv = [os.path.join(venv, "bin", "credsweeper"), "--path", tree, "--save-json", report, "--no-stdout", "--pedantic", "--log", "error"]
    if not ml:
        argv += ["--ml_threshold", "0"]
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, text=True, check=True)
    validation = " (ML validation on, medium)" if ml else " --ml_threshold 0 (no ML validation)"
    run = Run(seconds=time.perf_counter() - started, note=version(venv, "credsweeper") + " --pedantic" + validation)
    with open(report) as handle:
        for candidate in json.load(handle):
            for line in candidate["line_data_list"]:
                run.flag(os.path.relpath(line["path"], tree), line["line_num"] if line["line_num"] > 0 else WHOLE_FILE)
    return run


def version(venv: str, package: str) -> str:
    done = subprocess.run([os.path.join(venv, "bin", "pip"), "show", package], capture_output=True, text=True)
    found = re.search(r"^Version: (.+)$", done.stdout, re.M)
    return f"{package} {found.group(1) if found else '?'}"


# ---------------------------------------------------------------------------------------
# gitleaks' rule set as data


def python_regex(go: str) -> str:
    """A Go RE2 pattern as a Python one: a `(?i)` after the start applies to the rest of its
    group (each alternative of it), so it becomes scoped `(?i:...)`; `\\z` is `\\Z`."""
    go = go.replace(r"\z", r"\Z")
    while (at := go.find("(?i)", 1)) > 0:
        end, alternatives, depth, index, start = len(go), [], 0, at + 4, at + 4
        while index < len(go):
            char = go[index]
            if char == "\\":
                index += 2
                continue
            if char == "[":
                index = _class_end(go, index)
                continue
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    end = index
                    break
                depth -= 1
            elif char == "|" and depth == 0:
                alternatives.append((start, index))
                start = index + 1
            index += 1
        alternatives.append((start, end))
        scoped = "|".join(f"(?i:{go[a:b]})" for a, b in alternatives)
        go = go[:at] + scoped + go[end:]
    return go


def _class_end(pattern: str, index: int) -> int:
    """The index after the character class that opens at `index`."""
    index += 1
    if index < len(pattern) and pattern[index] == "^":
        index += 1
    if index < len(pattern) and pattern[index] == "]":
        index += 1
    while index < len(pattern) and pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return index + 1


def shannon(text: str) -> float:
    if not text:
        return 0.0
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


@dataclass
class Allowlist:
    paths: list[re.Pattern[str]]
    regexes: list[re.Pattern[str]]
    stopwords: list[str]
    target: str = "secret"
    all_of: bool = False  # condition = "AND"

    @classmethod
    def read(cls, table: dict) -> Allowlist:
        return cls([compiled(p) for p in table.get("paths", [])], [compiled(p) for p in table.get("regexes", [])],
                   [w.lower() for w in table.get("stopwords", [])], table.get("regexTarget", "secret"), table.get("condition", "OR") == "AND")

    def path_allowed(self, path: str) -> bool:
        return not self.all_of and any(p.search(path) for p in self.paths)

    def finding_allowed(self, path: str, secret: str, match: str, line: str) -> bool:
        target = {"match": match, "line": line}.get(self.target, secret)
        regex = bool(target) and any(r.search(target) for r in self.regexes)
        stopword = any(w in secret.lower() for w in self.stopwords)
        if not self.all_of:
            return regex or stopword
        checks = ([any(p.search(path) for p in self.paths)] if self.paths else []) + ([regex] if self.regexes else []) \
            + ([stopword] if self.stopwords else [])
        return all(checks)


@dataclass
class Rule:
    id: str
    regex: re.Pattern[str] | None
    path: re.Pattern[str] | None
    keywords: list[str]
    entropy: float
    secret_group: int
    allowlists: list[Allowlist]


def compiled(go: str) -> re.Pattern[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # RE2's `[[` is a literal bracket; Python warns of future nested sets
        return re.compile(python_regex(go), re.ASCII)


def gitleaks_rules(path: str = GITLEAKS_TOML) -> tuple[list[Rule], Allowlist, list[str]]:
    """The rules that Python's re compiles (after rewriting), the global allowlist, and the
    ids of the rules that would not compile."""
    with open(path, "rb") as handle:
        config = tomllib.load(handle)
    rules, failed = [], []
    for table in config["rules"]:
        try:
            rules.append(Rule(table["id"], compiled(table["regex"]) if "regex" in table else None,
                              compiled(table["path"]) if "path" in table else None, [k.lower() for k in table.get("keywords", [])],
                              float(table.get("entropy", 0)), int(table.get("secretGroup", 0)),
                              [Allowlist.read(a) for a in table.get("allowlists", [])]))
        except re.error as error:
            failed.append(f"{table['id']}: {error}")
    return rules, Allowlist.read(config.get("allowlist", {})), failed


# The "application" types of the filetype library that gitleaks reads files' heads with.
BINARY_MAGIC = (b"\x1f\x8b", b"PK\x03\x04", b"\x7fELF", b"%PDF", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
                b"SQLite format 3\x00", b"\x04\x22\x4d\x18", b"!<arch>", b"MZ")


def run_gitleaks_rules(tree: str) -> Run:
    started = time.perf_counter()
    rules, allowed, failed = gitleaks_rules()
    run = Run(note=f"{len(rules)} rules of gitleaks v8.30.1's default config, Python re" + (f"; not compiled: {failed}" if failed else ""))
    for path in regular_files(tree):
        if allowed.path_allowed(path):
            continue
        with open(os.path.join(tree, path), "rb") as handle:
            raw = handle.read()
        if raw.startswith(BINARY_MAGIC):
            continue  # gitleaks skips files of a known binary type (and archives, by default), scans any other bytes
        text = raw.decode("latin-1")
        for line in gitleaks_lines(rules, allowed, path, text):
            run.flag(path, line)
    run.seconds = time.perf_counter() - started
    return run


def gitleaks_lines(rules: list[Rule], allowed: Allowlist, path: str, text: str) -> Iterable[int]:
    """The lines of `text` where gitleaks' detector (detect/detect.go, v8.30) reports a finding."""
    lowered = text.lower()
    for rule in rules:
        if rule.keywords and not any(k in lowered for k in rule.keywords):
            continue
        if any(a.path_allowed(path) for a in rule.allowlists):
            continue
        if rule.path is not None and not rule.path.search(path):
            continue
        if rule.regex is None:
            yield WHOLE_FILE
            continue
        for match in rule.regex.finditer(text):
            whole = match.group(0).strip("\n")
            if not whole:
                continue
            groups = rule.regex.fullmatch(whole) or rule.regex.search(whole)
            secret = whole
            if groups is not None and groups.re.groups:
                chosen = groups.group(rule.secret_group) if rule.secret_group else next((g for g in groups.groups() if g), None)
                secret = chosen or whole
            if rule.entropy and shannon(secret) <= rule.entropy:
                continue
            start = match.start() + match.group(0).find(whole)
            line_start, line_end = text.rfind("\n", 0, start) + 1, text.find("\n", start + len(whole))
            line = text[line_start : line_end if line_end >= 0 else len(text)]
            if "gitleaks:allow" in line:
                continue
            if any(a.finding_allowed(path, secret, whole, line) for a in (allowed, *rule.allowlists)):
                continue
            yield text.count("\n", 0, start) + 1


# ---------------------------------------------------------------------------------------
# vml: its content patterns alone, and the real thing


def run_vml_patterns(tree: str) -> Run:
    """vml's content stage on a file no path rule names (vml/scrub/files.py): CONTENT
    everywhere (the text-only ones on text), ASSIGNMENT on configuration files (under etc/,
    dotfiles, config suffixes); no path rules, no redactors, no package check."""
    from vml.scrub.files import CONFIG_LIMIT, is_config
    from vml.scrub.patterns import ASSIGNMENT, CONTENT, NOT_A_VALUE, TEXT

    started = time.perf_counter()
    run = Run(note="vml/scrub/patterns.py CONTENT and ASSIGNMENT as the content stage applies them, with Python re")
    for path in regular_files(tree):
        with open(os.path.join(tree, path), "rb") as handle:
            data = handle.read()
        text = b"\0" not in data[:TEXT_PROBE]
        for pattern in CONTENT:
            if pattern.scope == TEXT and not text:
                continue
            for match in pattern.compiled.finditer(data):
                run.flag(path, data.count(b"\n", 0, match.start()) + 1)
        if text and len(data) <= CONFIG_LIMIT and is_config(path.encode(), None):
            for match in ASSIGNMENT.finditer(data):
                if not NOT_A_VALUE.match(match.group("secret")):
                    run.flag(path, data.count(b"\n", 0, match.start("secret")) + 1)
    run.seconds = time.perf_counter() - started
    return run


def run_vml(tree: str, scratch: str, records: list[Planted], benign: list[str]) -> tuple[Run, dict]:
    """A real repository: commit the tree, publish, restore the public entry into a directory."""
    work = os.path.join(scratch, "vml")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = {**os.environ, "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org", "VML_REPO": os.path.join(work, ".vml")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def vml(*argv: str) -> tuple[str, float]:
        started = time.perf_counter()
        done = subprocess.run([VML, *argv], cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"vml {' '.join(argv)}: {done.stderr[-2000:]}")
        return done.stdout, time.perf_counter() - started

    vml("init", work)
    vml("area", "add", "t", "--dir", tree)
    _, commit_s = vml("commit", "-m", "planted")
    report, _ = vml("publish", "main", "--dry-run", "--json")
    _, publish_s = vml("publish", "main")
    out = os.path.join(work, "public")
    _, checkout_s = vml("checkout", "public/main", "--to", out)
    restored: dict[str, bytes] = {}
    for path in regular_files(out):
        with open(os.path.join(out, path), "rb") as handle:
            restored[path] = handle.read()
    run = Run(seconds=publish_s, note=f"vml publish; commit {commit_s:.2f} s, checkout --to {checkout_s:.2f} s", left={}, changed=set())
    for index, record in enumerate(records):
        needles = [needle for found in forms(record.secret).values() for needle in found]
        where = [path for path, data in restored.items() if any(needle in opened for opened in (data, gunzipped(data)) for needle in needles)]
        if where:
            run.left[index] = where
    for path in benign:
        with open(os.path.join(tree, path), "rb") as handle:
            if restored.get(path) != handle.read():
                run.changed.add(path)
    return run, json.loads(report)


def gunzipped(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return b""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 64 << 20)
    except zlib.error:
        return b""


# ---------------------------------------------------------------------------------------
# Scoring and the report


def score(run: Run, tree: str, records: list[Planted], benign: dict[str, list[str]]) -> dict:
    if run.left is not None:
        hits = [index not in run.left for index in range(len(records))]
        flagged = {group: sorted(p for p in paths if p in (run.changed or set())) for group, paths in benign.items()}
    else:
        hits = [found(run, record, secret_lines(tree, record)) for record in records]
        flagged = {group: sorted(p for p in paths if p in run.flags) for group, paths in benign.items()}
    per_category: dict[str, list[int]] = {}
    per_kind: dict[str, list[int]] = {}
    for record, hit in zip(records, hits):
        for counts in (per_category.setdefault(record.category, [0, 0]), per_kind.setdefault(record.kind, [0, 0])):
            counts[0] += 1
            counts[1] += hit
    missed = [f"{record.kind} ({record.path})" for record, hit in zip(records, hits) if not hit]
    if run.left is not None:
        missed = [f"{records[index].kind} (left in {', '.join(where)})" for index, where in sorted(run.left.items())]
    return {"seconds": round(run.seconds, 3), "note": run.note, "found": sum(hits), "planted": len(records),
            "per_category": {c: {"planted": n, "found": f} for c, (n, f) in sorted(per_category.items())},
            "per_kind": {k: {"planted": n, "found": f} for k, (n, f) in sorted(per_kind.items())},
            "missed": missed, "false_positive_files": flagged,
            "false_positive_flags": None if run.left is not None else {group: sum(len(run.flags.get(p, ())) for p in paths)
                                                                       for group, paths in benign.items()}}


def table(results: dict[str, dict], records: list[Planted], benign: dict[str, list[str]]) -> str:
    names = list(results)
    width = max(12, *(len(n) for n in names))
    rows = [f"{'category':<18}{'planted':>8}" + "".join(f"{n:>{width + 1}}" for n in names)]
    for category in sorted({r.category for r in records}):
        planted = sum(1 for r in records if r.category == category)
        rows.append(f"{category:<18}{planted:>8}" + "".join(f"{results[n]['per_category'][category]['found']:>{width + 1}}" for n in names))
    rows.append(f"{'all':<18}{len(records):>8}" + "".join(f"{results[n]['found']:>{width + 1}}" for n in names))
    rows.append(f"{'recall':<26}" + "".join(f"{results[n]['found'] / len(records):>{width + 1}.0%}" for n in names))
    for group, paths in benign.items():
        rows.append(f"{'FP files, ' + group:<26}" + "".join(f"{len(results[n]['false_positive_files'][group]):>{width + 1}}" for n in names)
                    + f"   (of {len(paths)})")
    rows.append(f"{'wall time (s)':<26}" + "".join(f"{results[n]['seconds']:>{width + 1}.2f}" for n in names))
    return "\n".join(rows)


SCANNER_PACKAGES = ("detect-secrets==1.5.0", "credsweeper==1.19.5")  # the versions measured


def scanner_venv(venv: str) -> None:
    """The peers live in a venv of their own (CredSweeper brings onnxruntime and numpy): made here if missing."""
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        print(f"scanners: making {venv} with {', '.join(SCANNER_PACKAGES)}", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", *SCANNER_PACKAGES], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default=os.environ.get("VML_BENCH_SCRATCH", "/work/bench-scratch"))
    parser.add_argument("--scanner-venv", default="/work/scanner-venv")
    parser.add_argument("--bulk-source", default="/work/main/.venv/lib/python3.11/site-packages",
                        help="a site-packages whose installed text files join the benign corpus")
    parser.add_argument("--bulk-mb", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(SCANNERS), help=f"comma-separated, of {', '.join(SCANNERS)}")
    args = parser.parse_args()
    if {"detect-secrets", "credsweeper", "credsweeper-no-ml"} & set(args.only.split(",")):
        scanner_venv(args.scanner_venv)
    scratch = os.path.join(args.scratch, "scanners")
    shutil.rmtree(scratch, ignore_errors=True)
    tree = os.path.join(scratch, "tree")
    os.makedirs(tree)
    records, corpus = planted_tree(tree)
    benign = {"planted.py": corpus, "hand-made": benign_corpus(tree),
              "site-packages": bulk_sample(tree, args.bulk_source, args.bulk_mb) if args.bulk_mb > 0 else []}
    overlap = {relative(r.path) for r in records} & {p for paths in benign.values() for p in paths}
    assert not overlap, f"benign files that hold planted secrets: {overlap}"
    runners: dict[str, Callable[[], tuple[Run, dict | None]]] = {
        "detect-secrets": lambda: (run_detect_secrets(tree, args.scanner_venv), None),
        "credsweeper": lambda: (run_credsweeper(tree, args.scanner_venv, scratch, ml=True), None),
        "credsweeper-no-ml": lambda: (run_credsweeper(tree, args.scanner_venv, scratch, ml=False), None),
        "gitleaks-rules": lambda: (run_gitleaks_rules(tree), None),
        "vml-patterns": lambda: (run_vml_patterns(tree), None),
        "vml": lambda: run_vml(tree, scratch, records, [p for paths in benign.values() for p in paths]),
    }
    results, vml_report = {}, None
    for name in args.only.split(","):
        print(f"scanners: {name}", file=sys.stderr)
        run, said = runners[name]()
        vml_report = said or vml_report
        results[name] = score(run, tree, records, benign)
    files = list(regular_files(tree))
    report = {"date": datetime.date.today().isoformat(), "planted": len(records), "kinds": len({r.kind for r in records}),
              "tree_files": len(files), "tree_mb": round(sum(os.path.getsize(os.path.join(tree, p)) for p in files) / 1e6, 2),
              "benign_files": {group: paths for group, paths in benign.items() if group != "site-packages"},
              "site_packages_files": len(benign["site-packages"]), "results": results,
              "vml_findings": vml_report["findings"] if vml_report else None}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"{report['date']}-scanners.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    print(f"{len(records)} planted secrets of {report['kinds']} kinds (tests/support/planted.py); tree {len(files)} files, {report['tree_mb']} MB")
    print(table(results, records, benign))
    for name, result in results.items():
        print(f"\n{name}: {result['note']}\n  missed: {'; '.join(result['missed']) or '-'}")
        for group, flagged in result["false_positive_files"].items():
            if flagged:
                print(f"  false positives ({group}, {len(flagged)}): {', '.join(flagged[:10])}{' ...' if len(flagged) > 10 else ''}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
