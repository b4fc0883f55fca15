"""The files beside entry.toml in a public entry: the environment variables (secret values
blanked, a session's runtime variables left out), the shell history (lines with secrets
removed), the domain definition (graphics passwords), each scanned like any file. The
dotfiles under env/ are not scrubbed here: they are taken anew from the scrubbed tree."""

from __future__ import annotations

from vml.entry import DOMAIN_FILE
from vml.environment import DOTFILES, HISTORY, VARIABLES, decode_variables, encode_variables
from vml.scrub.files import FileScrubber
from vml.scrub.patterns import RUNTIME_VARIABLES, is_secret_name
from vml.scrub.redactors import history, xml_keys
from vml.scrub.report import DROP_LINES, REDACT, Finding, ScrubReport


def scrub_entry_files(files: dict[str, bytes], scrubber: FileScrubber, report: ScrubReport) -> dict[str, bytes]:
    scrubbed = {}
    for path, data in sorted(files.items()):
        if path.startswith(DOTFILES):
            continue
        if path == VARIABLES:
            data = _variables(data, scrubber, report)
        elif path == HISTORY:
            data, lines = history(data)
            if lines:
                report.findings.append(Finding(path, DROP_LINES, "shell-history", "history", tuple(lines)))
        elif path == DOMAIN_FILE:
            data, lines = xml_keys(data)
            if lines:
                report.findings.append(Finding(path, REDACT, "domain-passwords", "tokens", tuple(lines)))
        outcome = scrubber.text(path, data)
        report.findings.extend(outcome.findings)
        scrubbed[path] = outcome.content if outcome.content is not None else data
    return scrubbed


def _variables(data: bytes, scrubber: FileScrubber, report: ScrubReport) -> bytes:
    variables = decode_variables(data)
    kept, blanked = {}, []
    for name, value in variables.items():
        encoded = name.encode("utf-8", "surrogateescape")
        if encoded in RUNTIME_VARIABLES:
            continue
        if value and is_secret_name(encoded):
            blanked.append(name)
            value = ""
        kept[name] = value
    if blanked:
        report.findings.append(Finding(f"{VARIABLES} ({', '.join(sorted(blanked))})", REDACT, "environment-variables", "environment",
                                       tuple(range(1, len(blanked) + 1))))
    return encode_variables(kept) if kept != variables else data
