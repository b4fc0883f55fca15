"""A physicist's guest tree with secrets planted where ../shared/notes/secrets.md says they
live, the false-positive corpus that must come through a publish unchanged, and a search
for every planted secret in every form (raw, base64 in 3 alignments, hex, UTF-16LE) through
everything a repository directory holds: every file raw, every zstd frame anywhere in it
decompressed (so every pack blob, listed or not), each file of each entry reassembled (a
secret cut by a chunk boundary is whole there), gzip streams opened, and git's objects.

The search reads packs by the zstd frame format, not through vml's store: an object a
pack's table forgets, a half-written pack in tmp/, or a private pack copied whole is still
searched. It checks its own reach: a blob a pack's table lists that it could not open is
an error, never a silent miss."""

from __future__ import annotations

import array
import base64
import datetime
import gzip
import hashlib
import json
import os
import random
import string
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from vml.objects.chunker import MAX_SIZE, cut_buffer

# Where a planted secret sits in its file.
CONTENT, SYMLINK_TARGET, XATTR = "content", "symlink-target", "xattr"


@dataclass(frozen=True)
class Planted:
    kind: str
    category: str
    path: str  # from the tree's top, with a leading /
    secret: bytes  # what must not be found in a public repository, in any form
    earlier: bool = False  # only in the first entry: edited out (or deleted) before the entry that is published
    ephemeral: bool = False  # an expiring credential (proxy, ticket cache): left out of private entries too
    where: str = CONTENT  # or SYMLINK_TARGET (the path is a symlink), XATTR (in an extended attribute of the path)
    pieces: tuple[bytes, ...] = ()  # the parts a chunk boundary cuts it into: each is searched on its own too


class Planter:
    def __init__(self, root: Path, seed: int = 18):
        self.root = root
        self.rng = random.Random(seed)
        self.planted: list[Planted] = []

    def word(self, length: int = 20, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def digits(self, length: int) -> str:
        return self.word(length, string.digits)

    def password(self, _tag: str = "") -> str:
        """A password with letters and digits both (scanners skip a letters-only one), and no
        dictionary word (gitleaks' stopwords would hide it)."""
        return f"Pw-{self.word(13)}{self.rng.randrange(10)}"

    def sha512_crypt(self) -> str:
        return f"$6${self.word(16)}${self.word(86, './' + string.ascii_letters + string.digits)}"

    def jwt(self, claims: dict) -> str:
        def segment(value: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        signature = self.word(86, string.ascii_letters + string.digits + "-_")
        return f"{segment({'alg': 'RS256', 'typ': 'JWT'})}.{segment({**claims, 'jti': self.word(16)})}.{signature}"

    def write(self, path: str, data: bytes | str, mode: int = 0o600) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)
        return target

    def add(self, kind: str, category: str, path: str, secret: bytes | str, **how) -> None:
        self.planted.append(Planted(kind, category, path, secret.encode() if isinstance(secret, str) else secret, **how))

    def file(self, kind: str, category: str, path: str, template: str, secret: str, mode: int = 0o600) -> None:
        """A file holding one secret: `template` with the secret in its {} (braces doubled)."""
        self.write(path, template.format(secret), mode)
        self.add(kind, category, path, secret)


def _pem_body_line(pem: bytes) -> bytes:
    """A line from the middle of a PEM body: unique to the key, and long."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return lines[len(lines) // 2]


def _certificate(key, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1804).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))


def _pem(key, form=serialization.PrivateFormat.TraditionalOpenSSL) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def plant(root: Path, seed: int = 18) -> list[Planted]:
    """Build the guest under `root`; return every secret planted (at least 30, of 20 kinds).
    Homes: /root, /home/alice, and /data/phys (a home only /etc/passwd names)."""
    p = Planter(root, seed)
    p.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
                           "phys:x:1001:1001:Physics:/data/phys:/bin/zsh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n", 0o644)
    p.write("/etc/group", "root:x:0:\nalice:x:1000:\nphys:x:1001:\nanalysis:x:1100:alice,phys\n", 0o644)
    for section in (_accounts, _grid, _ssh, _tls, _kerberos, _dev_logins, _cloud, _network, _directory, _environment, _history,
                    _keyrings, _identity, _tokens, _large, _earlier):
        section(p)
    return p.planted


def _accounts(p: Planter) -> None:
    """Hashes in shadow (one behind a lock '!'), gshadow, the backups, opasswd, kickstart."""
    root_hash = f"$y$j9T${p.word(22, './' + string.ascii_letters)}${p.word(43)}"
    alice_hash, phys_hash = p.sha512_crypt(), p.sha512_crypt()
    p.write("/etc/shadow", f"root:{root_hash}:19700:0:99999:7:::\nalice:{alice_hash}:19700:0:99999:7:::\n"
                           f"phys:!{phys_hash}:19700:0:99999:7:::\nnobody:*:19700:0:99999:7:::\n", 0o640)
    p.add("shadow-yescrypt", "accounts", "/etc/shadow", root_hash)
    p.add("shadow-sha512", "accounts", "/etc/shadow", alice_hash)
    p.add("shadow-locked-hash", "accounts", "/etc/shadow", phys_hash)  # `passwd -l` keeps the hash behind the '!'
    group_hash = p.sha512_crypt()
    p.write("/etc/gshadow", f"root:*::\nalice:!::\nphys:!::\nanalysis:{group_hash}:alice:alice,phys\n", 0o640)
    p.add("gshadow-hash", "accounts", "/etc/gshadow", group_hash)
    old_hash = p.sha512_crypt()
    p.write("/etc/shadow-", f"root:{root_hash}:19600:0:99999:7:::\nalice:{old_hash}:19600:0:99999:7:::\n", 0o640)
    p.add("shadow-backup-hash", "accounts", "/etc/shadow-", old_hash)
    older_hash = p.sha512_crypt()
    p.write("/etc/security/opasswd", f"alice:1000:1:{older_hash}\n")
    p.add("opasswd-hash", "accounts", "/etc/security/opasswd", older_hash)
    rootpw = p.password("kickstart")
    p.write("/root/anaconda-ks.cfg", f"#version=RHEL9\nlang en_US.UTF-8\nkeyboard us\nrootpw --plaintext {rootpw}\n"
                                     f"user --name=alice --groups=wheel\nreboot\n")
    p.add("kickstart-rootpw", "accounts", "/root/anaconda-ks.cfg", rootpw)


def _grid(p: Planter) -> None:
    """An ENCRYPTED PKCS#8 userkey.pem, a PKCS#12, a proxy, a bearer token, HTCondor and oidc-agent tokens."""
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
    proxy_key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    p.write("/tmp/x509up_u1001", certificate.public_bytes(serialization.Encoding.PEM) + proxy_key)  # the proxy key is unencrypted
    p.add("grid-proxy", "grid", "/tmp/x509up_u1001", _pem_body_line(proxy_key), ephemeral=True)
    bearer = p.jwt({"iss": "https://cms-auth.web.cern.ch/", "sub": "phys", "scope": "storage.read:/"})
    p.write("/tmp/bt_u1001", bearer + "\n")
    p.add("wlcg-bearer-token", "grid", "/tmp/bt_u1001", bearer)
    condor = p.jwt({"iss": "cern.ch", "sub": "phys@cern.ch", "scope": "condor:/READ condor:/WRITE"})
    p.write("/etc/condor/tokens.d/phys.token", condor + "\n")
    p.add("condor-idtoken", "grid", "/etc/condor/tokens.d/phys.token", condor)
    oidc = base64.b64encode(p.rng.randbytes(180)).decode()
    p.write("/data/phys/.config/oidc-agent/wlcg", oidc + "\n")  # only a home from /etc/passwd finds it
    p.add("oidc-agent-account", "grid", "/data/phys/.config/oidc-agent/wlcg", oidc[60:120])


def _ssh(p: Planter) -> None:
    """User keys in two homes (OpenSSH and PEM), a host key, a PuTTY key, authorized_keys."""
    user_key = _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
    p.write("/home/alice/.ssh/id_ed25519", user_key)
    p.add("openssh-key", "ssh", "/home/alice/.ssh/id_ed25519", _pem_body_line(user_key))
    p.write("/home/alice/.ssh/config", "Host lxplus\n  User alice\n  IdentityFile ~/.ssh/id_ed25519\n", 0o644)
    root_key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    p.write("/root/.ssh/id_rsa", root_key)
    p.add("root-rsa-key", "ssh", "/root/.ssh/id_rsa", _pem_body_line(root_key))
    authorized = "AAAAC3NzaC1lZDI1NTE5AAAAI" + base64.b64encode(p.rng.randbytes(33)).decode()
    p.write("/home/alice/.ssh/authorized_keys", f"ssh-ed25519 {authorized} admin@laptop\n")
    p.add("authorized-keys", "ssh", "/home/alice/.ssh/authorized_keys", authorized)  # grants its author every clone
    host_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    p.write("/etc/ssh/ssh_host_ecdsa_key", host_key)
    p.add("ssh-host-key", "ssh-host", "/etc/ssh/ssh_host_ecdsa_key", _pem_body_line(host_key))
    host_ed25519 = _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
    p.write("/etc/ssh/ssh_host_ed25519_key", host_ed25519)
    p.add("ssh-host-ed25519-key", "ssh-host", "/etc/ssh/ssh_host_ed25519_key", _pem_body_line(host_ed25519))
    putty_private = base64.b64encode(p.rng.randbytes(48)).decode()
    p.write("/home/alice/keys/cluster.ppk", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: alice\nPublic-Lines: 2\n"
                                            f"{base64.b64encode(p.rng.randbytes(48)).decode()}\nAAAA\nPrivate-Lines: 1\n{putty_private}\n"
                                            f"Private-MAC: {p.rng.randbytes(32).hex()}\n")
    p.add("putty-key", "ssh", "/home/alice/keys/cluster.ppk", putty_private)


def _tls(p: Planter) -> None:
    """Keys no rule names by path: under /opt, /srv, /usr/local, an exported PGP key, an OpenVPN inline key."""
    service_key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    p.write("/opt/monitor/conf/service.pem", service_key, 0o640)
    p.add("rsa-pem-in-opt", "tls", "/opt/monitor/conf/service.pem", _pem_body_line(service_key))
    site_key = _pem(ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.PKCS8)
    assert site_key.startswith(b"-----BEGIN PRIVATE KEY-----")
    p.write("/srv/www/tls/site.key", site_key, 0o640)
    p.add("pkcs8-pem-in-srv", "tls", "/srv/www/tls/site.key", _pem_body_line(site_key))
    grafana_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    p.write("/usr/local/etc/grafana/grafana.key", grafana_key, 0o640)
    p.add("ec-pem-in-usr-local", "tls", "/usr/local/etc/grafana/grafana.key", _pem_body_line(grafana_key))
    body = [base64.b64encode(p.rng.randbytes(48)).decode() for _ in range(12)]
    p.write("/home/alice/backup/secret-subkeys.asc", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(body)
            + f"\n={base64.b64encode(p.rng.randbytes(3)).decode()}\n-----END PGP PRIVATE KEY BLOCK-----\n")
    p.add("pgp-private-key-export", "tls", "/home/alice/backup/secret-subkeys.asc", body[6])
    vpn_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    p.write("/etc/openvpn/client/cern.ovpn", f"client\ndev tun\nremote vpn.cern.ch 1194\n<key>\n{vpn_key.decode()}</key>\n")
    p.add("openvpn-inline-key", "network", "/etc/openvpn/client/cern.ovpn", _pem_body_line(vpn_key))


def _kerberos(p: Planter) -> None:
    keytab_key = p.rng.randbytes(32)
    p.write("/etc/krb5.keytab", b"\x05\x02\x00\x00\x00\x4a\x00\x01\x00\x07CERN.CH\x00\x04host" + keytab_key)
    p.add("keytab", "kerberos", "/etc/krb5.keytab", keytab_key)
    session_key = p.rng.randbytes(32)
    p.write("/tmp/krb5cc_1000", b"\x05\x04\x00\x0c\x00\x01\x00\x08" + bytes(8) + b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x07CERN.CH"
            b"\x00\x00\x00\x05alice\x00\x12\x00\x00\x00\x20" + session_key)
    p.add("krb5-ccache", "kerberos", "/tmp/krb5cc_1000", session_key, ephemeral=True)


def _dev_logins(p: Planter) -> None:
    def planted_file(kind: str, path: str, template: str, secret: str, mode: int = 0o600) -> None:
        p.file(kind, "dev-logins", path, template, secret, mode)

    planted_file("netrc", "/home/alice/.netrc", "machine gitlab.cern.ch login alice password {}\n", p.password())
    planted_file("pgpass", "/home/alice/.pgpass", "dbod.cern.ch:5432:physics:alice:{}\n", p.password())
    planted_file("git-credentials", "/home/alice/.git-credentials", "https://alice:{}@github.com\n", "ghp_" + p.word(36))
    planted_file("my-cnf", "/home/alice/.my.cnf", "[client]\nuser = alice\npassword = {}\nhost = dbod\n", p.password())
    planted_file("npm-token", "/home/alice/.npmrc", "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={}\n", "npm_" + p.word(36))
    planted_file("pypi-token", "/home/alice/.pypirc", "[pypi]\nusername = __token__\npassword = {}\n", "pypi-AgEIcHlwaS5vcmc" + p.word(60))
    planted_file("pip-url-userinfo", "/etc/pip.conf", "[global]\nindex-url = https://alice:{}@pypi.cern.ch/simple\n", p.password(), 0o644)
    planted_file("vault-token", "/data/phys/.vault-token", "{}", "hvs." + p.word(24))  # only a home from /etc/passwd finds it
    planted_file("apt-auth", "/etc/apt/auth.conf.d/cern.conf", "machine repo.cern.ch/el9 login phys password {}\n", p.password())
    planted_file("cargo-token", "/home/alice/.cargo/credentials.toml", '[registry]\ntoken = "{}"\n', "cio" + p.word(32))
    planted_file("gh-oauth-token", "/home/alice/.config/gh/hosts.yml", "github.com:\n    oauth_token: {}\n    user: alice\n    git_protocol: https\n",
                 "gho_" + p.word(36))
    planted_file("huggingface-token", "/data/phys/.cache/huggingface/token", "{}", "hf_" + p.word(34))
    planted_file("maven-password", "/home/alice/.m2/settings.xml",
                 "<settings>\n  <servers>\n    <server>\n      <id>cern-nexus</id>\n      <username>alice</username>\n"
                 "      <password>{}</password>\n    </server>\n  </servers>\n</settings>\n", p.password())
    planted_file("gitconfig-insteadof-token", "/home/alice/.gitconfig",
                 '[user]\n\tname = Alice\n\temail = alice@example.org\n[url "https://oauth2:{}@gitlab.cern.ch/"]\n\tinsteadOf = https://gitlab.cern.ch/\n',
                 "glpat-" + p.word(20), 0o644)
    planted_file("condarc-channel-token", "/data/phys/.condarc", "channels:\n  - https://conda.cern.ch/t/{}/physics\n  - conda-forge\n",
                 "tk-" + p.word(40), 0o644)
    argon = f"argon2:$argon2id$v=19$m=10240,t=10,p=8${p.word(22)}${p.word(43)}"
    planted_file("jupyter-hashed-password", "/home/alice/.jupyter/jupyter_server_config.json",
                 '{{\n  "IdentityProvider": {{\n    "hashed_password": "{}"\n  }},\n  "ServerApp": {{"port": 8888}}\n}}\n', argon)
    kernel_key = f"{p.rng.randbytes(4).hex()}-{p.rng.randbytes(2).hex()}-{p.rng.randbytes(2).hex()}-{p.rng.randbytes(2).hex()}-{p.rng.randbytes(6).hex()}"
    planted_file("jupyter-kernel-key", "/home/alice/.local/share/jupyter/runtime/kernel-4f2a.json",
                 '{{"shell_port": 50123, "iopub_port": 50124, "ip": "127.0.0.1", "key": "{}", "signature_scheme": "hmac-sha256"}}', kernel_key)


def _cloud(p: Planter) -> None:
    docker_password = p.password("docker")
    docker_auth = base64.b64encode(f"alice:{docker_password}".encode()).decode()
    p.write("/home/alice/.docker/config.json", json.dumps({"auths": {"registry.cern.ch": {"auth": docker_auth}}, "credsStore": ""}, indent=1))
    p.add("docker-auth-base64", "cloud", "/home/alice/.docker/config.json", docker_auth)
    p.add("docker-password", "cloud", "/home/alice/.docker/config.json", docker_password)
    aws_secret = p.word(40, string.ascii_letters + string.digits + "/+")
    aws_id = "AKIA" + p.word(16, string.ascii_uppercase + string.digits)
    p.write("/home/alice/.aws/credentials", f"[default]\naws_access_key_id = {aws_id}\naws_secret_access_key = {aws_secret}\n")
    p.add("aws-secret-key", "cloud", "/home/alice/.aws/credentials", aws_secret)
    p.add("aws-access-key-id", "cloud", "/home/alice/.aws/credentials", aws_id)
    kube_token = p.word(64)
    client_key = base64.b64encode(_pem(ec.generate_private_key(ec.SECP256R1()))).decode()
    p.write("/home/alice/.kube/config", f"apiVersion: v1\nkind: Config\nusers:\n- name: alice\n  user:\n    token: {kube_token}\n"
                                        f"- name: admin\n  user:\n    client-key-data: {client_key}\n")
    p.add("kube-token", "cloud", "/home/alice/.kube/config", kube_token)
    p.add("kube-client-key-data", "cloud", "/home/alice/.kube/config", client_key[100:164])
    refresh = "1//0g" + p.word(98, string.ascii_letters + string.digits + "-_")
    p.write("/data/phys/.config/gcloud/application_default_credentials.json",
            json.dumps({"client_id": f"{p.digits(12)}-{p.word(32).lower()}.apps.googleusercontent.com", "client_secret": "GOCSPX-" + p.word(28),
                        "refresh_token": refresh, "type": "authorized_user"}, indent=2))
    p.add("gcloud-refresh-token", "cloud", "/data/phys/.config/gcloud/application_default_credentials.json", refresh)
    azure = p.word(34, string.ascii_letters + string.digits + "~._-")
    p.write("/home/alice/.azure/service_principal_entries.json",
            json.dumps([{"client_id": str(_uuid(p.rng)), "tenant": str(_uuid(p.rng)), "client_secret": azure}]))
    p.add("azure-client-secret", "cloud", "/home/alice/.azure/service_principal_entries.json", azure)


def _network(p: Planter) -> None:
    """Wi-Fi (WPA-PSK and eduroam's 802.1X), wpa_supplicant, netplan, WireGuard, PPP, network drives."""
    p.file("networkmanager-psk", "network", "/etc/NetworkManager/system-connections/lab.nmconnection",
                 "[connection]\nid=lab\ntype=wifi\n\n[wifi]\nssid=lab\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n", p.password())
    p.file("networkmanager-8021x-password", "network", "/etc/NetworkManager/system-connections/eduroam.nmconnection",
                 "[connection]\nid=eduroam\ntype=wifi\n\n[wifi]\nssid=eduroam\n\n[wifi-security]\nkey-mgmt=wpa-eap\n\n"
                 "[802-1x]\neap=peap;\nidentity=alice@cern.ch\npassword={}\nphase2-auth=mschapv2\n", p.password())
    p.file("wpa-psk", "network", "/etc/wpa_supplicant/wpa_supplicant.conf", 'network={{\n    ssid="home"\n    psk="{}"\n}}\n', p.password())
    p.file("netplan-wifi-password", "network", "/etc/netplan/50-wifi.yaml",
                 'network:\n  version: 2\n  wifis:\n    wlan0:\n      dhcp4: true\n      access-points:\n        "lab":\n          password: "{}"\n',
                 p.password())
    wireguard, preshared = base64.b64encode(p.rng.randbytes(32)).decode(), base64.b64encode(p.rng.randbytes(32)).decode()
    p.write("/etc/wireguard/wg0.conf", f"[Interface]\nPrivateKey = {wireguard}\nAddress = 10.0.0.2/24\n\n"
                                       f"[Peer]\nPublicKey = {base64.b64encode(p.rng.randbytes(32)).decode()}\nPresharedKey = {preshared}\n"
                                       "Endpoint = vpn.example.org:51820\nAllowedIPs = 10.0.0.0/24\n")
    p.add("wireguard-key", "network", "/etc/wireguard/wg0.conf", wireguard)
    p.add("wireguard-preshared-key", "network", "/etc/wireguard/wg0.conf", preshared)
    p.file("ppp-chap-secret", "network", "/etc/ppp/chap-secrets", '# client\tserver\tsecret\tIP\nalice\t*\t"{}"\t*\n', p.password())
    cifs = p.password("cifs")
    p.write("/etc/fstab", "UUID=1234-abcd / ext4 errors=remount-ro 0 1\n"
                          f"//eosproject.cern.ch/data /eos cifs username=alice,password={cifs},uid=1000 0 0\n"
                          "//dfs.cern.ch/dfs /dfs cifs credentials=/root/.smbcredentials,uid=1000 0 0\n", 0o644)
    p.add("fstab-password", "network-drives", "/etc/fstab", cifs)
    p.file("autofs-password", "network-drives", "/etc/auto.cern", "data -fstype=cifs,username=alice,password={} ://dfs.cern.ch/data\n",
                 p.password(), 0o644)
    p.file("smb-credentials-file", "network-drives", "/root/.smbcredentials", "username=alice\npassword={}\ndomain=CERN\n", p.password())
    p.file("davfs2-secret", "network-drives", "/etc/davfs2/secrets", '# davfs2 secrets\nhttps://cernbox.cern.ch/remote.php/webdav alice "{}"\n',
                 p.password())
    p.file("rclone-pass", "network-drives", "/home/alice/.config/rclone/rclone.conf",
                 "[cernbox]\ntype = webdav\nurl = https://cernbox.cern.ch\nuser = alice\npass = {}\n", p.word(32))


def _directory(p: Planter) -> None:
    """sssd (key = value), nslcd (key value), an ldap.secret file."""
    authtok = p.password("sssd")
    p.write("/etc/sssd/sssd.conf", f"[domain/cern.ch]\nldap_default_authtok_type = obfuscated_password\nldap_default_authtok = {authtok}\n")
    p.add("sssd-authtok", "directory", "/etc/sssd/sssd.conf", authtok)
    bindpw = p.password("nslcd")
    p.write("/etc/nslcd.conf", f"uid nslcd\ngid nslcd\nuri ldaps://xldap.cern.ch\nbindpw {bindpw}\n")
    p.add("nslcd-bindpw", "directory", "/etc/nslcd.conf", bindpw)
    ldap_secret = p.password("ldap")
    p.write("/etc/ldap.secret", ldap_secret + "\n")
    p.add("ldap-secret-file", "directory", "/etc/ldap.secret", ldap_secret)


def _environment(p: Planter) -> None:
    """Variables in profiles (two homes), /etc/environment, profile.d, .env, a unit file and a crontab."""
    exported = p.word(40, string.ascii_letters + string.digits + "/+")
    p.write("/home/alice/.bashrc", f"export PATH=$HOME/bin:$PATH\nexport AWS_SECRET_ACCESS_KEY={exported}\n", 0o644)
    p.add("bashrc-export", "environment", "/home/alice/.bashrc", exported)
    bearer = p.jwt({"iss": "https://atlas-auth.web.cern.ch/", "sub": "phys"})
    p.write("/data/phys/.profile", f"export BEARER_TOKEN={bearer}\nexport X509_USER_PROXY=/tmp/x509up_u1001\n", 0o644)
    p.add("profile-bearer-token", "environment", "/data/phys/.profile", bearer)
    gitlab = "glpat-" + p.word(20)
    p.write("/etc/environment", f'LANG=C.UTF-8\nGITLAB_TOKEN="{gitlab}"\n', 0o644)
    p.add("etc-environment-token", "environment", "/etc/environment", gitlab)
    hf = "hf_" + p.word(34)
    p.write("/etc/profile.d/hf.sh", f"export HF_HOME=/data/hf\nexport HF_TOKEN={hf}\n", 0o644)
    p.add("profile-d-token", "environment", "/etc/profile.d/hf.sh", hf)
    openai = "sk-proj-" + p.word(48)
    p.write("/home/alice/analysis/.env", f"DATASET=run3\nOPENAI_API_KEY={openai}\n")
    p.add("dotenv-api-key", "environment", "/home/alice/analysis/.env", openai)
    unit = p.password("unit")
    p.write("/etc/systemd/system/monitor.service", f'[Service]\nEnvironment="DB_PASSWORD={unit}"\nExecStart=/opt/monitor/run\n', 0o644)
    p.add("systemd-environment", "environment", "/etc/systemd/system/monitor.service", unit)
    cron = p.password("cron")
    p.write("/var/spool/cron/crontabs/alice", f"0 3 * * * PGPASSWORD={cron} pg_dump -h dbod physics > /data/dump.sql\n")
    p.add("crontab-environment", "environment", "/var/spool/cron/crontabs/alice", cron)


# Benign lines each history keeps first: they must survive the scrub.
HISTORY_KEPT = ["ls -la", "cd ~/analysis", "root -l fit.C"]


def _history(p: Planter) -> None:
    """The catalogue's history forms, in bash (two homes), zsh, fish, Python, mysql and psql histories."""
    _history_file(p, "/home/alice/.bash_history", {
        "history-mysql": "mysql -u alice -p{} physics", "history-curl": "curl -u alice:{} https://api.cern.ch/x",
        "history-sshpass": "sshpass -p {} ssh lxplus", "history-url": "git clone https://alice:{}@gitlab.cern.ch/x.git",
        "history-kinit": "echo {} | kinit alice@CERN.CH"})
    github = "ghp_" + p.word(36)
    with (p.root / "home/alice/.bash_history").open("a") as history:
        history.write(f"export GITHUB_TOKEN={github}\nmake -j4\n")
    p.add("history-export-token", "history", "/home/alice/.bash_history", github)
    _history_file(p, "/root/.bash_history", {
        "history-smbclient": "smbclient //cernfs.cern.ch/dfs -U alice%{}", "history-pgpassword-prefix": "PGPASSWORD={} psql -h dbod -U admin physics",
        "history-mount-password": "mount -t cifs //eos.cern.ch/x /mnt -o username=alice,password={}",
        "history-openssl-passin": "openssl pkcs12 -in usercred.p12 -nokeys -passin pass:{} -out usercert.pem",
        "history-kubectl-literal": "kubectl create secret generic db --from-literal=password={}",
        "history-mysql-long-password": "mysql --password={} -h dbod physics",
        "history-docker-password-stdin": "echo {} | docker login --password-stdin -u alice registry.cern.ch"})
    _history_file(p, "/root/.bash_history", {"history-curl-bearer": "curl -H 'Authorization: Bearer {}' https://api.cern.ch/v1/jobs",
                                             "history-gh-with-token": "echo {} | gh auth login --with-token"},
                  secrets={"history-curl-bearer": p.jwt({"sub": "root"}), "history-gh-with-token": "gho_" + p.word(36)}, append=True)
    zsh = p.password("zsh")
    p.write("/data/phys/.zsh_history", f": 1700000000:0;ls\n: 1700000100:0;docker login -u phys -p {zsh} registry.cern.ch\n")
    p.add("history-zsh-docker", "history", "/data/phys/.zsh_history", zsh)
    fish = p.password("fish")
    p.write("/home/alice/.local/share/fish/fish_history", "- cmd: ls\n  when: 1700000000\n"
                                                          f"- cmd: psql postgresql://alice:{fish}@dbod.cern.ch:5432/physics\n  when: 1700000200\n")
    p.add("history-fish-url", "history", "/home/alice/.local/share/fish/fish_history", fish)
    python, requests_pw = p.password("py"), p.password("requests")
    p.write("/data/phys/.python_history", f'import psycopg2\nconn = psycopg2.connect(host="dbod", password="{python}")\n'
                                          f"r = requests.get(url, auth=('phys', '{requests_pw}'))\n")
    p.add("history-python", "history", "/data/phys/.python_history", python)
    p.add("history-python-auth-tuple", "history", "/data/phys/.python_history", requests_pw)
    mysql = p.password("mysql-history")  # the mysql client writes spaces as \040
    p.write("/home/alice/.mysql_history", f"_HiStOrY_V2_\nshow\\040databases;\nCREATE\\040USER\\040'app'@'%'\\040IDENTIFIED\\040BY\\040'{mysql}';\n")
    p.add("history-mysql-identified-by", "history", "/home/alice/.mysql_history", mysql)
    psql = p.password("psql")
    p.write("/home/alice/.psql_history", f"\\dt\nALTER USER alice WITH PASSWORD '{psql}';\nselect count(*) from runs;\n")
    p.add("history-psql-alter-password", "history", "/home/alice/.psql_history", psql)


def _history_file(p: Planter, path: str, forms_by_kind: dict[str, str], secrets: dict[str, str] | None = None, append: bool = False) -> None:
    lines = [] if append else list(HISTORY_KEPT)
    for kind, form in forms_by_kind.items():
        secret = (secrets or {}).get(kind) or p.password(kind)
        lines.append(form.format(secret))
        p.add(kind, "history", path, secret)
    target = p.root / path.lstrip("/")
    before = target.read_text() if append else ""
    p.write(path, before + "\n".join(lines) + "\n")


def _keyrings(p: Planter) -> None:
    """GnuPG, GNOME keyring, Firefox logins, X and VNC cookies, a Mathematica licence."""
    grip = p.rng.randbytes(20).hex().upper()
    d = p.rng.randbytes(32).hex().upper()
    p.write(f"/home/alice/.gnupg/private-keys-v1.d/{grip}.key", f"Created: 20260101T000000\nKey: (private-key (ecc (curve Ed25519)(flags eddsa)(q\n"
                                                                 f" #40{p.rng.randbytes(32).hex().upper()}#)(d #{d}#)))\n")
    p.add("gnupg-private-key", "keyrings", f"/home/alice/.gnupg/private-keys-v1.d/{grip}.key", d)
    keyring = b"GnomeKeyring\n\r\x00\n\x00\x00\x00\x00" + p.rng.randbytes(400)
    p.write("/home/alice/.local/share/keyrings/login.keyring", keyring)
    p.add("gnome-keyring", "keyrings", "/home/alice/.local/share/keyrings/login.keyring", keyring[200:240])
    encrypted = base64.b64encode(b"0\x81" + p.rng.randbytes(70)).decode()
    p.write("/home/alice/.mozilla/firefox/x1y2z3.default-release/logins.json",
            json.dumps({"nextId": 2, "logins": [{"id": 1, "hostname": "https://indico.cern.ch", "encryptedUsername": "MDoEEPgAAAAAAAAAAAAAAAAAAAEwFAYI",
                                                 "encryptedPassword": encrypted, "encType": 1}]}))
    p.add("firefox-logins", "keyrings", "/home/alice/.mozilla/firefox/x1y2z3.default-release/logins.json", encrypted)
    cookie = p.rng.randbytes(16)
    p.write("/data/phys/.Xauthority", b"\x01\x00\x00\x07physvm\x00\x01" + b"0" + b"\x00\x12MIT-MAGIC-COOKIE-1\x00\x10" + cookie)
    p.add("xauthority-cookie", "keyrings", "/data/phys/.Xauthority", cookie)
    vnc = p.rng.randbytes(8)  # the DES-obfuscated password: 8 bytes
    p.write("/data/phys/.vnc/passwd", vnc)
    p.add("vnc-passwd", "keyrings", "/data/phys/.vnc/passwd", vnc)
    mathpass = f"{p.digits(4)}-{p.digits(3)}-{p.digits(3)}:2,0,8,8:80001:20261231"
    p.write("/home/alice/.Mathematica/Licensing/mathpass", f"alice-vm\t{p.digits(4)}-{p.digits(5)}-{p.digits(5)}\t{mathpass}\n")
    p.add("mathematica-mathpass", "licences", "/home/alice/.Mathematica/Licensing/mathpass", mathpass)


def _identity(p: Planter) -> None:
    """machine-id (and dbus' copy), cloud-init user data, config and log."""
    machine_id = p.rng.randbytes(16).hex()
    p.write("/etc/machine-id", machine_id + "\n", 0o444)
    p.add("machine-id", "identity", "/etc/machine-id", machine_id)
    p.write("/var/lib/dbus/machine-id", machine_id + "\n", 0o444)
    p.add("dbus-machine-id", "identity", "/var/lib/dbus/machine-id", machine_id)
    chpasswd = p.password("chpasswd")
    p.write("/var/lib/cloud/instance/user-data.txt", f"#cloud-config\nchpasswd:\n  list: |\n    root:{chpasswd}\n  expire: false\n")
    p.add("cloud-init-user-data", "identity", "/var/lib/cloud/instance/user-data.txt", chpasswd)
    installer_hash = p.sha512_crypt()
    p.write("/etc/cloud/cloud.cfg.d/99-installer.cfg", f"#cloud-config\nusers:\n- name: alice\n  passwd: {installer_hash}\n  lock_passwd: false\n")
    p.add("cloud-init-config-hash", "identity", "/etc/cloud/cloud.cfg.d/99-installer.cfg", installer_hash)
    random_pw = p.password("cloud-init-log")
    p.write("/var/log/cloud-init-output.log", f"Cloud-init v. 24.1 running 'modules:config'\nSet the following 'random' passwords\nroot:{random_pw}\n")
    p.add("cloud-init-log-password", "identity", "/var/log/cloud-init-output.log", random_pw)


def _tokens(p: Planter) -> None:
    """Tokens in files no rule names, in a symlink's target, an xattr, and gzip files."""
    slack = "xoxb-" + p.digits(12) + "-" + p.word(24)
    p.write("/home/alice/notes/alerts.md", f"# alerts\nbot token: {slack}\n", 0o644)
    p.add("slack-token", "tokens", "/home/alice/notes/alerts.md", slack)
    jwt = p.jwt({"sub": "alice", "aud": "wlcg"})
    p.write("/home/alice/.config/wlcg/session.json", json.dumps({"access_token": jwt, "scope": "storage.read"}))
    p.add("jwt-bearer", "tokens", "/home/alice/.config/wlcg/session.json", jwt)
    google = "AIza" + p.word(35, string.ascii_letters + string.digits + "-_")
    p.write("/home/alice/analysis/geo.py", f'import requests\n\nAPI_KEY = "{google}"\n', 0o644)
    p.add("google-api-key", "tokens", "/home/alice/analysis/geo.py", google)
    link_password = p.password("link")
    (p.root / "home/alice/data").mkdir(parents=True, exist_ok=True)
    os.symlink(f"davs://alice:{link_password}@eosuser.cern.ch/eos/user/a/alice", p.root / "home/alice/data/eos")
    p.add("symlink-target-userinfo", "tokens", "/home/alice/data/eos", link_password, where=SYMLINK_TARGET)
    download = p.write("/home/alice/Downloads/dataset.tar", b"ustar dataset\n" * 10, 0o644)
    origin_token = "glpat-" + p.word(20)
    try:  # what wget, curl --xattr and browsers record of a download
        os.setxattr(download, b"user.xdg.origin.url", f"https://oauth2:{origin_token}@gitlab.cern.ch/api/v4/packages/dataset.tar".encode())
        p.add("xattr-origin-url", "tokens", "/home/alice/Downloads/dataset.tar", origin_token, where=XATTR)
    except OSError:
        pass  # a filesystem without user xattrs: nothing planted there
    gz_token = "glpat-" + p.word(20)
    p.write("/home/alice/logs/sync.log.1.gz", gzip.compress(f"sync ok\nretry with token {gz_token}\n".encode() * 3, mtime=0), 0o644)
    p.add("token-in-gzip", "tokens", "/home/alice/logs/sync.log.1.gz", gz_token)
    gz_password = p.password("gz")
    p.write("/var/log/app/db.log.2.gz", gzip.compress(b"".join(f"2026-01-0{n} connect host=dbod user=app password={gz_password} ok\n".encode()
                                                              for n in range(1, 8)), mtime=0), 0o640)
    p.add("password-in-gzip", "tokens", "/var/log/app/db.log.2.gz", gz_password)


def _large(p: Planter) -> None:
    """50 MB of a repeated log record (no content-defined cut: FastCDC cuts at its 4 MiB
    maximum, offsets that are also every read buffer's boundary) with a token across the
    6th cut and a PEM private key whose middle line is across the 9th."""
    record = b"run 000412 event ok;"
    data = bytearray(record * (50_000_000 // len(record)))
    token = ("ghp_" + p.word(36)).encode()
    token_cut = 6 * MAX_SIZE
    data[token_cut - len(token) // 2 : token_cut - len(token) // 2 + len(token)] = token
    key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    line = _pem_body_line(key)
    key_cut = 9 * MAX_SIZE
    key_start = key_cut - key.index(line) - len(line) // 2
    data[key_start : key_start + len(key)] = key
    cuts, position = set(), 0
    for piece in cut_buffer(bytes(data)):
        position += len(piece)
        cuts.add(position)
    assert {token_cut, key_cut} <= cuts, "a planted secret no longer straddles a chunk boundary"
    path = "/data/phys/runs/run000412.log"
    p.write(path, bytes(data), 0o644)
    p.add("token-across-chunks", "tokens", path, token, pieces=(token[: len(token) // 2], token[len(token) // 2 :]))
    p.add("pem-across-chunks", "tls", path, line, pieces=(line[: len(line) // 2], line[len(line) // 2 :]))


def _earlier(p: Planter) -> None:
    """Present in the first entry only: edited out, or deleted, before the second (see `edit_out_earlier`)."""
    earlier = "hvs." + p.word(30)
    p.write("/home/alice/analysis/config.yaml", f"dataset: run3\nvault_token: {earlier}\n", 0o644)
    p.add("earlier-vault-token", "tokens", "/home/alice/analysis/config.yaml", earlier, earlier=True)
    deleted = p.password("deleted")
    p.write("/home/alice/tmp/dbod-admin.txt", f"dbod admin password: {deleted}\n")
    p.add("earlier-deleted-file", "dev-logins", "/home/alice/tmp/dbod-admin.txt", deleted, earlier=True)


def edit_out_earlier(root: Path) -> None:
    (root / "home/alice/analysis/config.yaml").write_text("dataset: run3\n")
    (root / "home/alice/tmp/dbod-admin.txt").unlink()


def false_positive_corpus(root: Path, seed: int = 7) -> list[str]:
    """Files full of hashes, ids, code and variables that are not secrets, which must come
    through a publish byte-identical. Returns their paths (from the top, leading /)."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    site = "/opt/conda/lib/python3.11/site-packages"
    record = [f"numpy/{name}.py,sha256={base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b'=').decode()},{rng.randrange(99999)}"
              for name in ("core", "linalg", "fft", "random", "ma")]
    files[f"{site}/numpy-1.26.4.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    files["/opt/conda/conda-meta/numpy-1.26.4-py311.json"] = json.dumps(
        {"name": "numpy", "sha256": rng.randbytes(32).hex(), "md5": rng.randbytes(16).hex(), "files": ["lib/x.so"],
         "url": "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4.conda", "auth": None, "token": None}, indent=1).encode()
    files["/home/alice/analysis/.git/packed-refs"] = "".join(f"{rng.randbytes(20).hex()} refs/tags/v{n}\n" for n in range(5)).encode()
    files["/home/alice/analysis/.git/ORIG_HEAD"] = (rng.randbytes(20).hex() + "\n").encode()
    files["/home/alice/analysis/ids.csv"] = "".join(f"{hashlib.sha1(str(n).encode()).hexdigest()},{_uuid(rng)}\n" for n in range(50)).encode()
    files["/home/alice/analysis/fit.C"] = (b'void fit() {\n  TFile *f = TFile::Open("root://eospublic.cern.ch//eos/opendata/run.root");\n'
                                           b'  TH1F *h = new TH1F("mass", "token mass;GeV;events", 100, 0, 200);\n'
                                           b'  TString password_hint = "none";\n  h->Fit("gaus");\n}\n')
    files["/home/alice/analysis/tokenizer.py"] = b"def tokenize(line):\n    token = line.split()\n    return token  # not a secret\n"
    files["/home/alice/analysis/db.py"] = b'import os\n\npassword = os.environ["DB_PASSWORD"]\napi_key = "${API_KEY}"\n'
    files["/home/alice/web/package-lock.json"] = json.dumps({"name": "site", "lockfileVersion": 3, "packages": {
        f"node_modules/{name}": {"version": "1.0.0", "integrity": "sha512-" + base64.b64encode(rng.randbytes(64)).decode()}
        for name in ("left-pad", "chalk", "debug")}}, indent=2).encode()
    files["/home/alice/.bashrc.d/conda.sh"] = b'export PATH=/opt/conda/bin:$PATH\nexport TOKENIZERS_PARALLELISM=false\nalias ll="ls -l"\n'
    files["/data/phys/.bashrc"] = (b"# .bashrc\n[ -f /etc/bashrc ] && . /etc/bashrc\nexport PATH=$HOME/.local/bin:$PATH\n"
                                   b"export TOKENIZERS_PARALLELISM=false\nexport PASSWORD_STORE_DIR=$HOME/.password-store\n"
                                   b"export BEARER_TOKEN_FILE=/tmp/bt_u1001\nexport AUTHOR=\"Physics Group\"\n"
                                   b"source /cvmfs/sft.cern.ch/lcg/views/LCG_105/x86_64-el9-gcc13-opt/setup.sh\nalias root='root -l'\n")
    files["/etc/systemd/system/jupyter.service"] = (b"[Service]\nEnvironment=PYTHONUNBUFFERED=1\nEnvironment=TOKENIZERS_PARALLELISM=false\n"
                                                    b"ExecStart=/opt/conda/bin/jupyter lab\n")
    files["/home/alice/.ssh/known_hosts"] = ("".join(f"host{n}.cern.ch ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{base64.b64encode(rng.randbytes(32)).decode()}\n"
                                                     for n in range(4))).encode()
    cert_key = ec.generate_private_key(ec.SECP256R1())
    files["/etc/grid-security/certificates/CERN-Root.pem"] = _certificate(cert_key, "CERN Root").public_bytes(serialization.Encoding.PEM)
    files["/home/alice/.globus/usercert.pem"] = _certificate(cert_key, "alice").public_bytes(serialization.Encoding.PEM)  # public; her key is on a token
    files["/home/alice/.ssh/lxplus_ed25519.pub"] = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{base64.b64encode(rng.randbytes(33)).decode()} alice@vm\n".encode()
    files["/data/phys/runs/hist.root"] = b"root\x00\x00\xf4\x3a" + rng.randbytes(1 << 20)  # physics data: binary, high entropy
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
    own bytes decide; standard and URL-safe alphabets), hex (both cases) and UTF-16LE."""
    found: dict[str, list[bytes]] = {"raw": [secret], "hex": [secret.hex().encode(), secret.hex().upper().encode()],
                                     "utf-16le": [secret.decode("latin-1").encode("utf-16-le")], "base64": []}
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + secret)
        skip = 4 if shift else 0  # the first group mixes in the bytes before
        middle = encoded[skip:-4]
        if len(middle) >= 8:
            found["base64"].append(middle)
            urlsafe = middle.translate(bytes.maketrans(b"+/", b"-_"))
            if urlsafe != middle:
                found["base64"].append(urlsafe)
    return found


class Needles:
    """Every form of every planted secret (and each piece of a cut one), looked for in one
    pass over a haystack: each needle's 8-byte windows go in a table, the haystack's
    8-aligned words are looked up in it, and each candidate is confirmed with a plain `in`
    (a needle of 15 bytes or more covers an aligned word wherever it lies; shorter ones are
    looked for directly)."""

    WORD = 8

    def __init__(self, planted: list[Planted]):
        self.needles: list[tuple[str, str, bytes]] = []  # kind, form, bytes
        for item in planted:
            for form_name, variants in forms(item.secret).items():
                self.needles.extend((item.kind, form_name, needle) for needle in variants)
            self.needles.extend((item.kind, "piece", piece) for piece in item.pieces)
        self._by_word: dict[int, set[int]] = {}
        self._short: list[int] = []
        for index, (_kind, _form, needle) in enumerate(self.needles):
            if len(needle) < 2 * self.WORD - 1:
                self._short.append(index)
                continue
            for start in range(len(needle) - self.WORD + 1):
                self._by_word.setdefault(int.from_bytes(needle[start : start + self.WORD], sys.byteorder), set()).add(index)
        self._words = frozenset(self._by_word)

    def found_in(self, data: bytes) -> list[tuple[str, str]]:
        """(kind, form) of each needle `data` holds."""
        words = array.array("Q")
        words.frombytes(memoryview(data)[: len(data) // self.WORD * self.WORD])
        candidates = set(self._short)
        for word in self._words.intersection(words):
            candidates |= self._by_word[word]
        return [self.needles[index][:2] for index in sorted(candidates) if self.needles[index][2] in data]


def find_secrets(repository: Path, planted: list[Planted]) -> dict[str, list[str]]:
    """kind -> where each planted secret was found (as 'form in place') in a repository
    directory (a bare one, or a .vml), or in any directory (a checkout): every file raw,
    every zstd frame and gzip stream in it opened, every reassembled file of every entry
    any commit names, every git object."""
    needles = Needles(planted)
    hits: dict[str, list[str]] = {}
    seen: set[bytes] = set()
    for where, data in haystacks(repository):
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        for kind, form_name in needles.found_in(data):
            hits.setdefault(kind, []).append(f"{form_name} in {where}")
    return hits


def haystacks(top: Path) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of everything under `top` a secret could hide in."""
    for path in sorted(top.rglob("*")):
        name = str(path.relative_to(top))
        if path.is_symlink():
            yield f"symlink {name}", os.readlink(path).encode("utf-8", "surrogateescape")
        elif path.is_file():
            data = path.read_bytes()
            yield from _opened(name, data)
            yield from _xattrs(name, path)
    if (top / "vml" / "store").is_dir():
        yield from _entry_files(top)
    if (top / "HEAD").is_file() and (top / "objects").is_dir():
        yield from _git_objects(top)


def _opened(where: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The bytes, the zstd frames in them (every pack blob), the gzip streams in both."""
    for found_where, content in [(where, data), *_zstd_frames(where, data)]:
        yield found_where, content
        yield from _gunzipped(found_where, content)


def _xattrs(where: str, path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        yield f"xattr {name} of {where}", os.getxattr(path, name, follow_symlinks=False)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PACK_MAGIC, PACK_END_MAGIC = b"VMLPACK\x01", b"VMLPEND\x01"
_PACK_FOOTER, _PACK_ENTRY = struct.Struct("<IIQ8s"), struct.Struct("<32sBBIII")  # as vml/objects/pack.py writes them
_FLAG_RAW, _FLAG_ZSTD = 0, 1  # vml/objects/compress.py


def _zstd_frames(where: str, data: bytes) -> list[tuple[str, bytes]]:
    """Every zstd frame found in `data` by its magic number, decompressed; for a vml pack,
    a check that every zstd blob its table lists was one of them."""
    frames: list[tuple[str, bytes]] = []
    offsets: set[int] = set()
    position = data.find(ZSTD_MAGIC)
    while position != -1:
        length = _frame_length(data, position)
        content = _decompressed(data[position : position + length]) if length else None
        if content is None:
            position = data.find(ZSTD_MAGIC, position + 1)
            continue
        frames.append((f"zstd frame at {position} of {where}", content))
        offsets.add(position)
        position = data.find(ZSTD_MAGIC, position + length)
    for offset, flag in _pack_table(data):
        if (flag == _FLAG_ZSTD and offset not in offsets) or flag not in (_FLAG_RAW, _FLAG_ZSTD):
            raise AssertionError(f"{where}: the blob its table lists at {offset} (flag {flag}) is not one this search can open")
    return frames


def _frame_length(data: bytes, start: int) -> int | None:
    """The length of the zstd frame at `start`, from its header and block headers (RFC 8878)."""
    at = start + 4
    if at >= len(data) or data[at] & 0x08:  # the reserved bit
        return None
    descriptor = data[at]
    single_segment, checksum, dictionary, content_size = descriptor >> 5 & 1, descriptor >> 2 & 1, descriptor & 3, descriptor >> 6
    at += 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[dictionary] + ((1 if single_segment else 0), 2, 4, 8)[content_size]
    while True:
        if at + 3 > len(data):
            return None
        header = int.from_bytes(data[at : at + 3], "little")
        block_type, size = header >> 1 & 3, header >> 3
        if block_type == 3:
            return None
        at += 3 + (1 if block_type == 1 else size)
        if header & 1:
            break
    at += 4 if checksum else 0
    return at - start if at <= len(data) else None


def _decompressed(frame: bytes) -> bytes | None:
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(frame)
    except zstandard.ZstdError:
        return None


def _pack_table(data: bytes) -> list[tuple[int, int]]:
    """(offset, flag) of each blob a vml pack's table lists; [] for anything else."""
    return [(offset, flag) for _id, _type, flag, offset, _length, _raw in _pack_entries(data)]


def _pack_entries(data: bytes) -> list[tuple[bytes, int, int, int, int, int]]:
    """(id, type, flag, offset, length, raw length) of each blob a vml pack's table lists; [] for anything else."""
    if not data.startswith(PACK_MAGIC) or len(data) < len(PACK_MAGIC) + _PACK_FOOTER.size:
        return []
    count, table_length, _sum, end_magic = _PACK_FOOTER.unpack(data[-_PACK_FOOTER.size :])
    if end_magic != PACK_END_MAGIC or table_length != count * _PACK_ENTRY.size:
        return []
    return list(_PACK_ENTRY.iter_unpack(data[-_PACK_FOOTER.size - table_length : -_PACK_FOOTER.size]))


def pack_blob_ids(top: Path) -> set[bytes]:
    """The id of every blob the table of any vml pack under `top` lists."""
    return {entry[0] for path in top.rglob("*.pack") if path.is_file() for entry in _pack_entries(path.read_bytes())}


GZIP_MAGIC = b"\x1f\x8b\x08"


def _gunzipped(where: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The decompressed content of each gzip stream in `data` (all members), up to 256 MB."""
    position = data.find(GZIP_MAGIC)
    while position != -1:
        content, rest = _gunzip_members(data[position:])
        if content:
            yield f"gunzipped at {position} of {where}", content
            position = data.find(GZIP_MAGIC, len(data) - rest)
        else:
            position = data.find(GZIP_MAGIC, position + 1)


def _gunzip_members(data: bytes) -> tuple[bytes, int]:
    """The content of the gzip members at the start of `data`, and how many bytes follow them."""
    out, rest = [], data
    while rest.startswith(GZIP_MAGIC):
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(stream.decompress(rest, 256 << 20))
        except zlib.error:
            break
        rest = stream.unused_data
    return b"".join(out), len(rest)


def _entry_files(repository: Path) -> Iterator[tuple[str, bytes]]:
    """Each file of each entry any commit names, reassembled from its chunks, and its gzip streams."""
    from vml.objects.manifest import KIND_FILE
    from vml.objects.store import ChunkStore
    from vml.objects.walk import listing_loader, read_content, walk_nodes

    store = ChunkStore(str(repository / "vml" / "store")).open()
    try:
        load = listing_loader(store)
        for root in entry_roots(repository):
            for path, node in walk_nodes(load, root):
                if node.kind == KIND_FILE and node.size > 0:
                    where = f"file {path.decode(errors='replace')} of entry tree {root.hex()[:12]}"
                    data = read_content(store, node)
                    yield where, data
                    yield from _gunzipped(where, data)
    finally:
        store.close()


def entry_roots(repository: Path) -> list[bytes]:
    """The root listing ids of the entries any commit of `repository` names."""
    from vml.entry import EntryInfo

    listed = subprocess.run(["git", "--git-dir", str(repository), "rev-list", "--all"], capture_output=True, text=True).stdout.split()
    roots: list[bytes] = []
    for commit in listed:
        shown = subprocess.run(["git", "--git-dir", str(repository), "show", f"{commit}:entry.toml"], capture_output=True)
        if shown.returncode == 0:
            roots.extend(bytes(root) for root in EntryInfo.from_toml(shown.stdout).manifests() if bytes(root) not in roots)
    return roots


def _git_objects(repository: Path) -> Iterator[tuple[str, bytes]]:
    """Every object git holds, reachable or not, loose or packed."""
    objects = subprocess.run(["git", "--git-dir", str(repository), "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
                             capture_output=True, text=True, check=True).stdout.split()
    if objects:
        batch = subprocess.run(["git", "--git-dir", str(repository), "cat-file", "--batch"], input="\n".join(objects).encode(),
                               capture_output=True, check=True).stdout
        yield "git objects", batch
        yield from _gunzipped("git objects", batch)
