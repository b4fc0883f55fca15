"""A physicist's guest tree with secrets planted where ../shared/notes/secrets.md says they
live, the false-positive corpus that must come through a publish unchanged, and a search
for every planted secret in every form (raw, base64 in 3 alignments, hex, UTF-16LE) through
everything a repository directory holds: each blob of its packs decompressed, each file of
each entry reassembled (a secret cut by a chunk boundary is whole there), gzip streams
opened, and git's objects."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import os
import random
import string
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from vml.objects.chunker import MAX_SIZE, cut_buffer


@dataclass(frozen=True)
class Planted:
    kind: str
    category: str
    path: str  # from the tree's top, with a leading /
    secret: bytes  # what must not be found in a public repository, in any form
    earlier: bool = False  # only in the first entry: edited out before the entry that is published


class Planter:
    def __init__(self, root: Path, seed: int = 18):
        self.root = root
        self.rng = random.Random(seed)
        self.planted: list[Planted] = []

    def word(self, length: int = 20, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def password(self, _tag: str = "") -> str:
        """A password with letters and digits both (scanners skip a letters-only one), and no
        dictionary word (gitleaks' stopwords would hide it)."""
        return f"Pw-{self.word(13)}{self.rng.randrange(10)}"

    def write(self, path: str, data: bytes | str, mode: int = 0o600) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)
        return target

    def add(self, kind: str, category: str, path: str, secret: bytes | str, earlier: bool = False) -> None:
        self.planted.append(Planted(kind, category, path, secret.encode() if isinstance(secret, str) else secret, earlier))


def _pem_body_line(pem: bytes) -> bytes:
    """A line from the middle of a PEM body: unique to the key, and long."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return lines[len(lines) // 2]


def _certificate(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1804).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))


def plant(root: Path, seed: int = 18) -> list[Planted]:
    """Build the guest under `root`; return every secret planted (at least 30, of 20 kinds)."""
    p = Planter(root, seed)
    p.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
                           "phys:x:1001:1001:Physics:/data/phys:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n", 0o644)
    p.write("/etc/group", "root:x:0:\nalice:x:1000:\nphys:x:1001:\n", 0o644)

    # Accounts: hashes in shadow; the file must keep its users and nine fields.
    root_hash, alice_hash = f"$y$j9T${p.word(22, './' + string.ascii_letters)}${p.word(43)}", f"$6${p.word(16)}${p.word(86)}"
    p.write("/etc/shadow", f"root:{root_hash}:19700:0:99999:7:::\nalice:{alice_hash}:19700:0:99999:7:::\n"
                           f"phys:!:19700:0:99999:7:::\nnobody:*:19700:0:99999:7:::\n", 0o640)
    p.add("shadow-yescrypt", "accounts", "/etc/shadow", root_hash)
    p.add("shadow-sha512", "accounts", "/etc/shadow", alice_hash)

    # Grid identity: an ENCRYPTED PKCS#8 userkey.pem, its public certificate, a PKCS#12.
    grid_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    userkey = grid_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"grid-pass"))
    assert userkey.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    p.write("/data/phys/.globus/userkey.pem", userkey, 0o400)
    p.add("encrypted-pkcs8", "grid", "/data/phys/.globus/userkey.pem", _pem_body_line(userkey))
    certificate = _certificate(grid_key, "phys")
    p.write("/data/phys/.globus/usercert.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    p12 = pkcs12.serialize_key_and_certificates(b"phys", grid_key, certificate, None, serialization.BestAvailableEncryption(b"p12-pass"))
    p.write("/data/phys/.globus/usercred.p12", p12)
    p.add("pkcs12", "grid", "/data/phys/.globus/usercred.p12", p12[len(p12) // 2 : len(p12) // 2 + 48])

    # SSH: a user key (OpenSSH format), a host key (PEM EC), a PuTTY key.
    user_key = ed25519.Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                                  serialization.NoEncryption())
    p.write("/home/alice/.ssh/id_ed25519", user_key)
    p.add("openssh-key", "ssh", "/home/alice/.ssh/id_ed25519", _pem_body_line(user_key))
    p.write("/home/alice/.ssh/config", "Host lxplus\n  User alice\n  IdentityFile ~/.ssh/id_ed25519\n", 0o644)
    host_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                                     serialization.NoEncryption())
    p.write("/etc/ssh/ssh_host_ecdsa_key", host_key)
    p.add("ssh-host-key", "ssh-host", "/etc/ssh/ssh_host_ecdsa_key", _pem_body_line(host_key))
    putty_private = base64.b64encode(p.rng.randbytes(48)).decode()
    p.write("/home/alice/keys/cluster.ppk", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: alice\nPublic-Lines: 2\n"
                                            f"{base64.b64encode(p.rng.randbytes(48)).decode()}\nAAAA\nPrivate-Lines: 1\n{putty_private}\n"
                                            f"Private-MAC: {p.rng.randbytes(32).hex()}\n")
    p.add("putty-key", "ssh", "/home/alice/keys/cluster.ppk", putty_private)

    # TLS: a service key under /opt, found by content (no rule names the path).
    service_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    p.write("/opt/monitor/conf/service.pem", service_key, 0o640)
    p.add("rsa-pem-in-opt", "tls", "/opt/monitor/conf/service.pem", _pem_body_line(service_key))

    # Kerberos: a keytab (binary).
    keytab_key = p.rng.randbytes(32)
    p.write("/etc/krb5.keytab", b"\x05\x02\x00\x00\x00\x4a\x00\x01\x00\x07CERN.CH\x00\x04host" + keytab_key)
    p.add("keytab", "kerberos", "/etc/krb5.keytab", keytab_key)

    # Dev logins.
    netrc = p.password("netrc")
    p.write("/home/alice/.netrc", f"machine gitlab.cern.ch login alice password {netrc}\n")
    p.add("netrc", "dev-logins", "/home/alice/.netrc", netrc)
    pgpass = p.password("pg")
    p.write("/home/alice/.pgpass", f"dbod.cern.ch:5432:physics:alice:{pgpass}\n")
    p.add("pgpass", "dev-logins", "/home/alice/.pgpass", pgpass)
    git_token = "ghp_" + p.word(36)
    p.write("/home/alice/.git-credentials", f"https://alice:{git_token}@github.com\n")
    p.add("git-credentials", "dev-logins", "/home/alice/.git-credentials", git_token)
    mycnf = p.password("mysql")
    p.write("/home/alice/.my.cnf", f"[client]\nuser = alice\npassword = {mycnf}\nhost = dbod\n")
    p.add("my-cnf", "dev-logins", "/home/alice/.my.cnf", mycnf)
    npm = "npm_" + p.word(36)
    p.write("/home/alice/.npmrc", f"registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={npm}\n")
    p.add("npm-token", "dev-logins", "/home/alice/.npmrc", npm)
    pypi = "pypi-AgEIcHlwaS5vcmc" + p.word(60)
    p.write("/home/alice/.pypirc", f"[pypi]\nusername = __token__\npassword = {pypi}\n")
    p.add("pypi-token", "dev-logins", "/home/alice/.pypirc", pypi)
    pip_password = p.password("pip")
    p.write("/etc/pip.conf", f"[global]\nindex-url = https://alice:{pip_password}@pypi.cern.ch/simple\n", 0o644)
    p.add("pip-url-userinfo", "dev-logins", "/etc/pip.conf", pip_password)

    # Containers and cloud.
    docker_password = p.password("docker")
    docker_auth = base64.b64encode(f"alice:{docker_password}".encode()).decode()
    p.write("/home/alice/.docker/config.json", json.dumps({"auths": {"registry.cern.ch": {"auth": docker_auth}}, "credsStore": ""}, indent=1))
    p.add("docker-auth-base64", "cloud", "/home/alice/.docker/config.json", docker_auth)
    p.add("docker-password", "cloud", "/home/alice/.docker/config.json", docker_password)
    aws_secret = p.word(40, string.ascii_letters + string.digits + "/+")
    aws_id = "AKIA" + p.word(16, string.ascii_uppercase + string.digits)
    p.write("/home/alice/.aws/credentials", f"[default]\naws_access_key_id = {aws_id}\naws_secret_access_key = {aws_secret}\n")
    p.add("aws-secret-key", "cloud", "/home/alice/.aws/credentials", aws_secret)
    kube_token = p.word(64)
    p.write("/home/alice/.kube/config", f"apiVersion: v1\nusers:\n- name: alice\n  user:\n    token: {kube_token}\n")
    p.add("kube-token", "cloud", "/home/alice/.kube/config", kube_token)

    # Network: Wi-Fi keyfile, wpa_supplicant, WireGuard, fstab and autofs credentials.
    wifi = p.password("wifi")
    p.write("/etc/NetworkManager/system-connections/lab.nmconnection",
            f"[connection]\nid=lab\ntype=wifi\n\n[wifi]\nssid=lab\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={wifi}\n")
    p.add("networkmanager-psk", "network", "/etc/NetworkManager/system-connections/lab.nmconnection", wifi)
    wpa = p.password("wpa")
    p.write("/etc/wpa_supplicant/wpa_supplicant.conf", f'network={{\n    ssid="home"\n    psk="{wpa}"\n}}\n')
    p.add("wpa-psk", "network", "/etc/wpa_supplicant/wpa_supplicant.conf", wpa)
    wireguard = base64.b64encode(p.rng.randbytes(32)).decode()
    p.write("/etc/wireguard/wg0.conf", f"[Interface]\nPrivateKey = {wireguard}\nAddress = 10.0.0.2/24\n")
    p.add("wireguard-key", "network", "/etc/wireguard/wg0.conf", wireguard)
    cifs = p.password("cifs")
    p.write("/etc/fstab", "UUID=1234-abcd / ext4 errors=remount-ro 0 1\n"
                          f"//eosproject.cern.ch/data /eos cifs username=alice,password={cifs},uid=1000 0 0\n", 0o644)
    p.add("fstab-password", "network-drives", "/etc/fstab", cifs)
    autofs = p.password("autofs")
    p.write("/etc/auto.cern", f"data -fstype=cifs,username=alice,password={autofs} ://dfs.cern.ch/data\n", 0o644)
    p.add("autofs-password", "network-drives", "/etc/auto.cern", autofs)

    # Directory services: sssd (key = value) and nslcd (key value); sssd's *_type stays.
    authtok = p.password("sssd")
    p.write("/etc/sssd/sssd.conf", f"[domain/cern.ch]\nldap_default_authtok_type = obfuscated_password\nldap_default_authtok = {authtok}\n")
    p.add("sssd-authtok", "directory", "/etc/sssd/sssd.conf", authtok)
    bindpw = p.password("nslcd")
    p.write("/etc/nslcd.conf", f"uid nslcd\ngid nslcd\nuri ldaps://xldap.cern.ch\nbindpw {bindpw}\n")
    p.add("nslcd-bindpw", "directory", "/etc/nslcd.conf", bindpw)
    rclone = p.word(32)
    p.write("/home/alice/.config/rclone/rclone.conf", f"[cernbox]\ntype = webdav\nurl = https://cernbox.cern.ch\nuser = alice\npass = {rclone}\n")
    p.add("rclone-pass", "network-drives", "/home/alice/.config/rclone/rclone.conf", rclone)

    # Environment: variables in profiles, /etc/environment, a unit file and a crontab.
    exported = aws_secret[::-1]
    p.write("/home/alice/.bashrc", f"export PATH=$HOME/bin:$PATH\nexport AWS_SECRET_ACCESS_KEY={exported}\n", 0o644)
    p.add("bashrc-export", "environment", "/home/alice/.bashrc", exported)
    gitlab = "glpat-" + p.word(20)
    p.write("/etc/environment", f'LANG=C.UTF-8\nGITLAB_TOKEN="{gitlab}"\n', 0o644)
    p.add("etc-environment-token", "environment", "/etc/environment", gitlab)
    unit = p.password("unit")
    p.write("/etc/systemd/system/monitor.service", f'[Service]\nEnvironment="DB_PASSWORD={unit}"\nExecStart=/opt/monitor/run\n', 0o644)
    p.add("systemd-environment", "environment", "/etc/systemd/system/monitor.service", unit)
    cron = p.password("cron")
    p.write("/var/spool/cron/crontabs/alice", f"0 3 * * * PGPASSWORD={cron} pg_dump -h dbod physics > /data/dump.sql\n")
    p.add("crontab-environment", "environment", "/var/spool/cron/crontabs/alice", cron)

    # Shell history, several forms and shells.
    forms = {"history-mysql": "mysql -u alice -p{} physics", "history-curl": "curl -u alice:{} https://api.cern.ch/x",
             "history-sshpass": "sshpass -p {} ssh lxplus", "history-url": "git clone https://alice:{}@gitlab.cern.ch/x.git",
             "history-kinit": "echo {} | kinit alice@CERN.CH"}
    lines = ["ls -la", "cd ~/analysis", "root -l fit.C"]
    for kind, form in forms.items():
        secret = p.password(kind.split("-")[1])
        lines.append(form.format(secret))
        p.add(kind, "history", "/home/alice/.bash_history", secret)
    github = "ghp_" + p.word(36)
    lines.append(f"export GITHUB_TOKEN={github}")
    p.add("history-export-token", "history", "/home/alice/.bash_history", github)
    p.write("/home/alice/.bash_history", "\n".join(lines + ["make -j4"]) + "\n")
    zsh = p.password("zsh")
    p.write("/data/phys/.zsh_history", f": 1700000000:0;ls\n: 1700000100:0;docker login -u phys -p {zsh} registry.cern.ch\n")
    p.add("history-zsh-docker", "history", "/data/phys/.zsh_history", zsh)
    python = p.password("py")
    requests_pw = p.password("requests")
    p.write("/data/phys/.python_history", f'import psycopg2\nconn = psycopg2.connect(host="dbod", password="{python}")\n'
                                          f"r = requests.get(url, auth=('phys', '{requests_pw}'))\n")
    p.add("history-python", "history", "/data/phys/.python_history", python)
    p.add("history-python-auth-tuple", "history", "/data/phys/.python_history", requests_pw)

    # Tokens in files no rule names: a notes file, a session JSON.
    slack = "xoxb-" + p.word(12, string.digits) + "-" + p.word(24)
    p.write("/home/alice/notes/alerts.md", f"# alerts\nbot token: {slack}\n", 0o644)
    p.add("slack-token", "tokens", "/home/alice/notes/alerts.md", slack)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "alice", "n": p.word(12)}).encode()).rstrip(b"=").decode()
    jwt = f"{header}.{claims}.{p.word(43, string.ascii_letters + string.digits + '-_')}"
    p.write("/home/alice/.config/wlcg/session.json", json.dumps({"access_token": jwt, "scope": "storage.read"}))
    p.add("jwt-bearer", "tokens", "/home/alice/.config/wlcg/session.json", jwt)

    # A secret inside a 50 MB file, cut by a chunk boundary; one inside a gzip file.
    _plant_large(p)
    gz_token = "glpat-" + p.word(20)
    p.write("/home/alice/logs/sync.log.1.gz", gzip.compress(f"sync ok\nretry with token {gz_token}\n".encode() * 3, mtime=0), 0o644)
    p.add("token-in-gzip", "tokens", "/home/alice/logs/sync.log.1.gz", gz_token)

    # Present in the first entry only: edited out before the second (see `edit_out_earlier`).
    earlier = "hvs." + p.word(30)
    p.write("/home/alice/analysis/config.yaml", f"dataset: run3\nvault_token: {earlier}\n", 0o644)
    p.add("earlier-vault-token", "tokens", "/home/alice/analysis/config.yaml", earlier, earlier=True)
    return p.planted


def _plant_large(p: Planter) -> None:
    """50 MB of a repeated record (no content-defined cut: FastCDC cuts at its 4 MiB maximum)
    with a token across the 6th cut."""
    record = b"run 000412 event ok;"
    data = bytearray(record * (50_000_000 // len(record)))
    token = ("ghp_" + p.word(36)).encode()
    cut = 6 * MAX_SIZE
    start = cut - len(token) // 2
    data[start : start + len(token)] = token
    offsets, position = [], 0
    for piece in cut_buffer(bytes(data)):
        position += len(piece)
        offsets.append(position)
    assert cut in offsets, "the planted token no longer straddles a chunk boundary"
    p.write("/data/phys/runs/run000412.log", bytes(data), 0o644)
    p.add("token-across-chunks", "tokens", "/data/phys/runs/run000412.log", token)


def edit_out_earlier(root: Path) -> None:
    (root / "home/alice/analysis/config.yaml").write_text("dataset: run3\n")


def false_positive_corpus(root: Path, seed: int = 7) -> list[str]:
    """Files full of hashes, ids and code that must come through a publish byte-identical."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    site = "/opt/conda/lib/python3.11/site-packages"
    record = [f"numpy/{name}.py,sha256={base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b'=').decode()},{rng.randrange(99999)}"
              for name in ("core", "linalg", "fft", "random", "ma")]
    files[f"{site}/numpy-1.26.4.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    files["/opt/conda/conda-meta/numpy-1.26.4-py311.json"] = json.dumps(
        {"name": "numpy", "sha256": rng.randbytes(32).hex(), "md5": rng.randbytes(16).hex(), "files": ["lib/x.so"],
         "url": "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4.conda"}, indent=1).encode()
    files["/home/alice/analysis/.git/packed-refs"] = "".join(f"{rng.randbytes(20).hex()} refs/tags/v{n}\n" for n in range(5)).encode()
    files["/home/alice/analysis/ids.csv"] = "".join(f"{hashlib.sha1(str(n).encode()).hexdigest()},{_uuid(rng)}\n" for n in range(50)).encode()
    files["/home/alice/analysis/fit.C"] = (b'void fit() {\n  TFile *f = TFile::Open("root://eospublic.cern.ch//eos/opendata/run.root");\n'
                                           b'  TH1F *h = new TH1F("mass", "token mass;GeV;events", 100, 0, 200);\n'
                                           b'  TString password_hint = "none";\n  h->Fit("gaus");\n}\n')
    files["/home/alice/.bashrc.d/conda.sh"] = b'export PATH=/opt/conda/bin:$PATH\nexport TOKENIZERS_PARALLELISM=false\nalias ll="ls -l"\n'
    files["/home/alice/.ssh/known_hosts"] = ("".join(f"host{n}.cern.ch ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{base64.b64encode(rng.randbytes(32)).decode()}\n"
                                                     for n in range(4))).encode()
    cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["/etc/grid-security/certificates/CERN-Root.pem"] = _certificate(cert_key, "CERN Root").public_bytes(serialization.Encoding.PEM)
    files["/home/alice/analysis/tokenizer.py"] = b"def tokenize(line):\n    token = line.split()\n    return token  # not a secret\n"
    for path, data in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return sorted(files)


def _uuid(rng: random.Random) -> str:
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- the search


def forms(secret: bytes) -> dict[str, list[bytes]]:
    """The byte strings a secret shows as: raw, base64 in each of 3 alignments (the part its
    own bytes decide), hex (both cases) and UTF-16LE."""
    found: dict[str, list[bytes]] = {"raw": [secret], "hex": [secret.hex().encode(), secret.hex().upper().encode()],
                                     "utf-16le": [secret.decode("latin-1").encode("utf-16-le")], "base64": []}
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + secret)
        skip = 4 if shift else 0  # the first group mixes in the bytes before
        middle = encoded[skip:-4]
        if len(middle) >= 8:
            found["base64"].append(middle)
    return found


def search(repository: Path, planted: list[Planted]) -> dict[str, list[str]]:
    """kind -> where each planted secret was found (as 'form in place') in a repository
    directory (a bare one, or a .vml): every blob, every reassembled file of every entry
    and memory tree any ref names, gzip streams opened, every git object."""
    haystacks = list(_haystacks(repository))
    hits: dict[str, list[str]] = {}
    for item in planted:
        for form_name, needles in forms(item.secret).items():
            for where, data in haystacks:
                if any(needle in data for needle in needles):
                    hits.setdefault(item.kind, []).append(f"{form_name} in {where}")
    return hits


def _haystacks(repository: Path):
    from vml.objects.manifest import KIND_FILE
    from vml.objects.store import ChunkStore
    from vml.objects.walk import listing_loader, read_content, walk_nodes

    store = ChunkStore(str(repository / "vml" / "store")).open()
    try:
        for blob_id, _location in list(store.items()):
            data = store.get(blob_id)
            yield f"blob {blob_id.hex()[:12]}", data
            yield from _opened(f"blob {blob_id.hex()[:12]}", data)
        load = listing_loader(store)
        for root in _entry_roots(repository):
            for path, node in walk_nodes(load, root):
                if node.kind == KIND_FILE and node.size > 0:
                    data = read_content(store, node)
                    yield f"file {path.decode(errors='replace')}", data
                    yield from _opened(f"file {path.decode(errors='replace')}", data)
    finally:
        store.close()
    objects = subprocess.run(["git", "--git-dir", str(repository), "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
                             capture_output=True, text=True, check=True).stdout.split()
    if objects:
        batch = subprocess.run(["git", "--git-dir", str(repository), "cat-file", "--batch"], input="\n".join(objects).encode(),
                               capture_output=True, check=True).stdout
        yield "git objects", batch
    for path in repository.rglob("*"):  # anything else lying there: packs raw, indexes, caches, reflogs
        if path.is_file() and "store" not in path.parts:
            yield f"{path.relative_to(repository)}", path.read_bytes()


def _entry_roots(repository: Path) -> list[bytes]:
    from vml.entry import EntryInfo

    listed = subprocess.run(["git", "--git-dir", str(repository), "rev-list", "--all"], capture_output=True, text=True).stdout.split()
    roots = []
    for commit in listed:
        shown = subprocess.run(["git", "--git-dir", str(repository), "show", f"{commit}:entry.toml"], capture_output=True)
        if shown.returncode == 0:
            info = EntryInfo.from_toml(shown.stdout)
            roots.extend(bytes(root) for root in info.manifests())
    return roots


def _opened(where: str, data: bytes):
    """The decompressed stream of gzip data (a rotated log), up to 64 MB."""
    if data[:2] == b"\x1f\x8b":
        try:
            yield f"gunzipped {where}", zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 64 << 20)
        except zlib.error:
            pass
