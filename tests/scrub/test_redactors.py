"""Format-aware redactors: the secret goes, the file still parses as its format."""

from __future__ import annotations

import configparser
import json

from vml.scrub import redactors


def test_shadow_keeps_users_and_fields_and_locks_every_hash():
    data = (b"root:$y$j9T$salt$hash:19700:0:99999:7:::\n"
            b"daemon:*:19700:0:99999:7:::\n"
            b"alice:$6$rounds=5000$s$h:19700:0:99999:7:::\n"
            b"locked:!$6$s$h:19700:0:99999:7:::\n"
            b"nopass::19700:0:99999:7:::\n")
    new, lines = redactors.shadow(data)
    rows = [line.split(b":") for line in new.decode().encode().splitlines()]
    assert [row[0] for row in rows] == [b"root", b"daemon", b"alice", b"locked", b"nopass"]
    assert all(len(row) == 9 for row in rows)
    assert [row[1] for row in rows] == [b"!", b"*", b"!", b"!", b""]
    assert lines == [1, 3, 4] and b"$" not in new


def test_mount_options_lose_credentials_and_keep_six_fields():
    data = (b"# <file system> <mount point> <type> <options> <dump> <pass>\n"
            b"UUID=abcd / ext4 errors=remount-ro 0 1\n"
            b"//srv/data /mnt/data cifs username=bob,password=Pw-1,uid=1000,credentials=/etc/cifs.cred 0 0\n"
            b"//srv/only /mnt/only cifs password=Pw-2 0 0\n")
    new, lines = redactors.mount_options(data)
    assert b"Pw-1" not in new and b"Pw-2" not in new and b"bob" not in new and lines == [3, 4]
    for line in new.splitlines()[1:]:
        assert len(line.split()) == 6
    assert b"credentials=/etc/cifs.cred" in new and b"errors=remount-ro" in new
    autofs, _ = redactors.mount_options(b"data -fstype=cifs,user=bob,pass=Pw-3 ://srv/data\n")
    assert autofs == b"data -fstype=cifs ://srv/data\n"


def test_keyfiles_keep_sections_and_keys():
    data = (b"[connection]\nid=Eduroam\n\n[wifi-security]\nkey-mgmt=wpa-eap\npsk=Wifi-Secret-1\n\n"
            b"[802-1x]\nidentity=alice@cern.ch\npassword=Eap-Secret-2\npassword-flags=0\n")
    new, lines = redactors.assignments(data)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(new.decode())
    assert parser["wifi-security"]["psk"] == "VML-REDACTED" and parser["802-1x"]["password"] == "VML-REDACTED"
    assert parser["802-1x"]["identity"] == "alice@cern.ch" and parser["802-1x"]["password-flags"] == "0"
    assert lines == [6, 10]


def test_quoted_values_keep_their_quotes():
    new, _ = redactors.assignments(b'network={\n    ssid="lab"\n    psk="Wpa-Secret-3"\n}\n')
    assert new == b'network={\n    ssid="lab"\n    psk="VML-REDACTED"\n}\n'


def test_environment_keeps_names_and_blanks_secret_values():
    data = (b"export PATH=$HOME/bin:$PATH\nexport AWS_SECRET_ACCESS_KEY=Aws-Secret-4\nGITHUB_TOKEN=\"ghp-like\"\n"
            b"export TOKENIZERS_PARALLELISM=false\nexport X509_USER_PROXY_FILE=/tmp/x\nEnvironment=\"DB_PASSWORD=Db-Secret-5\"\n")
    new, lines = redactors.environment(data)
    assert b"Aws-Secret-4" not in new and b"ghp-like" not in new and b"Db-Secret-5" not in new
    assert b"export AWS_SECRET_ACCESS_KEY=\n" in new and b'GITHUB_TOKEN=""' in new and b'Environment="DB_PASSWORD="' in new
    assert b"TOKENIZERS_PARALLELISM=false" in new and b"export PATH=$HOME/bin:$PATH" in new
    assert redactors.environment(b"export AUTHOR=Jane\nexport OAUTH_TOKEN=x1\n0 2 * * * MYSQL_PWD=Cron-9 mysqldump db\n") == (
        b"export AUTHOR=Jane\nexport OAUTH_TOKEN=\n0 2 * * * MYSQL_PWD= mysqldump db\n", [2, 3])
    assert lines == [2, 3, 6]


def test_history_drops_whole_lines_with_secrets():
    forms = [b"mysql -u root -pHist-1 physics", b"curl -u bob:Hist-2 https://x", b"sshpass -p Hist-3 ssh lxplus",
             b"export GITLAB_TOKEN=Hist-4", b"git clone https://bob:Hist-5@gitlab.cern.ch/x.git", b"echo Hist-6 | kinit bob@CERN.CH",
             b"docker login -u bob -p Hist-7 registry", b"PGPASSWORD=Hist-8 psql -h db", b"smbclient //srv/x -U bob%Hist-9",
             b"curl -H 'Authorization: Bearer Hist-10abcdef' https://api", b"openssl pkcs12 -in a.p12 -passin pass:Hist-11",
             b": 1700000000:0;mysql -pHist-12"]
    benign = [b"ls -la", b"cd ~/analysis", b"root -l fit.C", b"python3 plot.py --passes 3", b"git log --oneline"]
    new, dropped = redactors.history(b"\n".join(benign[:3] + forms + benign[3:]) + b"\n")
    assert new.split(b"\n")[:-1] == benign
    assert len(dropped) == len(forms)


def test_json_keys_stay_valid_json():
    data = json.dumps({"auths": {"registry.cern.ch": {"auth": "Ym9iOkRvY2tlci0x"}}, "credsStore": "pass",
                       "HttpHeaders": {"User-Agent": "x"}, "identitytoken": "Tok-2"}, indent=2).encode() + b"\n"
    new, lines = redactors.json_keys(data)
    parsed = json.loads(new)
    assert parsed["auths"]["registry.cern.ch"]["auth"] == "VML-REDACTED" and parsed["identitytoken"] == "VML-REDACTED"
    assert parsed["credsStore"] == "pass" and lines


def test_xml_machine_id_netrc_kickstart():
    new, _ = redactors.xml_keys(b"<settings><servers><server><id>x</id><password>Mvn-1</password></server></servers></settings>")
    assert b"Mvn-1" not in new and b"<password>VML-REDACTED</password>" in new
    assert redactors.empty(b"0123abcd\n") == (b"", [1])
    new, _ = redactors.netrc(b"machine a login bob password Netrc-1\nmachine b login c account Acct-2 password Netrc-3\n")
    assert b"Netrc" not in new and b"Acct-2" not in new and b"login bob" in new
    new, _ = redactors.kickstart(b"lang en_US\nrootpw --iscrypted $6$x$y\nuser --name=bob --password=Ks-1 --iscrypted\n")
    assert new == b"lang en_US\nrootpw --lock\nuser --name=bob --iscrypted\n"
