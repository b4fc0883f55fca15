"""The content scan: where keys and tokens are found (across chunk boundaries, inside gzip,
in binaries) and how they are taken out (text: a placeholder; binary: as many filler bytes)."""

from __future__ import annotations

import gzip
import os

import pytest

from vml.scrub.files import FileScrubber
from vml.scrub.patterns import content_matcher
from vml.scrub.rules import RuleSet, load_rules

ENCRYPTED_KEY = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQwwDgQI\n"
                 b"Q2xldmVyU2VjcmV0S2V5TWF0ZXJpYWw=\n-----END ENCRYPTED PRIVATE KEY-----\n")
TOKEN = b"ghp_" + b"Ab1" * 12


@pytest.fixture(scope="module")
def scrubber() -> FileScrubber:
    return FileScrubber(RuleSet(load_rules(None), []), store=None)  # type: ignore[arg-type]  # scan() reads no store


def test_every_pem_header_is_a_private_key_block(scrubber: FileScrubber):
    for header in (b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"OPENSSH PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"PRIVATE KEY", b"DSA PRIVATE KEY"):
        key = ENCRYPTED_KEY.replace(b"ENCRYPTED PRIVATE KEY", header)
        outcome = scrubber.scan("f", b"before\n" + key + b"after\n", False, reviewed=True)
        assert outcome.content == b"before\nVML-REDACTED:private-key\nafter\n", header
    certificate = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert scrubber.scan("f", certificate, False, reviewed=True).content is None


def test_tokens_in_text_are_replaced_and_reported_masked(scrubber: FileScrubber):
    data = b"line one\nmy token is " + TOKEN + b" ok\nurl=https://bob:Url-Pw-1@host/x\n"
    outcome = scrubber.scan("/opt/x", data, False, reviewed=False)
    assert outcome.content == b"line one\nmy token is VML-REDACTED:github-token ok\nurl=https://VML-REDACTED:url-userinfo@host/x\n"
    assert [(f.rule, f.lines, f.reviewed) for f in outcome.findings] == [("github-token", (2,), False), ("url-userinfo", (3,), False)]
    assert outcome.findings[0].preview == "gh…(40)" and TOKEN.decode() not in repr(outcome.findings)


def test_a_binary_keeps_its_length(scrubber: FileScrubber):
    data = os.urandom(1000) + b"\0" + TOKEN + b"\0" + os.urandom(1000)  # NULs: random bytes could lengthen the token
    outcome = scrubber.scan("/opt/blob", data, False, reviewed=True)
    assert outcome.content is not None and len(outcome.content) == len(data) and TOKEN not in outcome.content
    assert outcome.content[:1001] == data[:1001] and outcome.content[-1001:] == data[-1001:]


def test_a_secret_inside_gzip_drops_the_file(scrubber: FileScrubber):
    outcome = scrubber.scan("/var/log/app.log.1.gz", gzip.compress(b"ok\npassword=Gz-Secret-1\n" + TOKEN + b"\n"), True, reviewed=True)
    assert outcome.dropped and outcome.findings[0].action == "drop"
    assert not scrubber.scan("/x.gz", gzip.compress(b"nothing here\n"), True, reviewed=True).dropped


def test_config_assignments_only_in_config_files(scrubber: FileScrubber):
    data = b"[db]\nuser = bob\npassword = Cfg-Secret-1\npassword_file = /etc/x\nenabled = true\n"
    assert scrubber.scan("/etc/app.ini", data, True, reviewed=True).content == data.replace(b"Cfg-Secret-1", b"VML-REDACTED:secret-assignment")
    assert scrubber.scan("/usr/lib/python3/x.py", data, False, reviewed=True).content is None


def test_the_stream_finds_a_token_cut_by_a_chunk_boundary():
    data = os.urandom(299_999) + b" " + TOKEN + b" " + os.urandom(300_000)
    cut = 300_000 + len(TOKEN) // 2
    stream = content_matcher().stream()
    stream.feed(data[:cut])
    stream.feed(data[cut:])
    assert any(end == 300_000 + len(TOKEN) for _pattern, end in stream.close())
    alone = content_matcher().stream()
    alone.feed(data[:cut])
    assert alone.close() == []  # half a token is no token: the match needed both pieces


@pytest.mark.parametrize("benign", [
    b"f47ac10b-58cc-4372-a567-0e02b2c3d479\n",
    b"da39a3ee5e6b4b0d3255bfef95601890afd80709 refs/heads/main\n",
    b'{"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "name": "numpy"}\n',
    b"numpy/__init__.py,sha256=Tml0aGluZyB0byBzZWUgaGVyZQ_abcdefghijklmnopqrstu,4321\n",
    b'void fit() { TH1F *h = new TH1F("h", "mass;GeV", 100, 0, 10); h->Fit("gaus"); }\n',
    b"export TOKENIZERS_PARALLELISM=false\n",
])
def test_common_content_is_left_alone(scrubber: FileScrubber, benign: bytes):
    assert scrubber.scan("/opt/x/data", benign, False, reviewed=True).content is None
