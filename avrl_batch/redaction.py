"""Credential-looking text, found and scrubbed in one place.

Every message, log line, error row and manifest that may hold a URL, an argument or an
environment value goes through ``redact``; ``avrl submit`` refuses a job in which
``findings`` sees anything (commands/submit.check_no_credentials). The forms:

* ``user:password@`` (or ``token@``) in a URL: MinIO endpoints, pip index URLs, git URLs;
* AWS access key ids (``AKIA…``, ``ASIA…`` and the other IAM id prefixes);
* a presigned URL's ``X-Amz-Signature``, ``X-Amz-Security-Token``, ``X-Amz-Credential``
  (and the older ``Signature`` / ``AWSAccessKeyId``) query parameters;
* ``NAME=value`` or ``NAME: value`` where NAME says secret, password, token, api key, access
  key, private key or credentials (``--aws-secret-access-key=…``, ``MINIO_ROOT_PASSWORD=…``);
* the value of this process's own credential variables, verbatim (``CREDENTIAL_ENV``).

Plain functions, no I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

MASK = "***"

# Environment variables whose values are credentials (their values are scrubbed verbatim).
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "RAY_AUTH_TOKEN",
    "MINIO_ROOT_PASSWORD",
    "MINIO_SECRET_KEY",
)

# A name that says it holds a secret (an env var, an option, a YAML key, a query parameter).
SECRET_NAME = re.compile(
    r"(?i)(secret|passw(or)?d|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)"
)
# ...but these name where a secret is, not the secret itself
_NOT_SECRET = re.compile(r"(?i)(_path|_file|_mode|_dir)$")

# What a value stops at: white space, quotes and the separators of URLs and lists.
_VALUE = r"[^\s\"'&,;<>\\]+"

# A masked value (already redacted) is no finding: the patterns skip "***".
_FORMS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (
        "a user:password@ or token@ in a URL",
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?!\*\*\*@)[^/@\s\"'<>]+@"),
        r"\1" + MASK + "@",
    ),
    (
        "an AWS access key id",
        re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA)[A-Z0-9]{12,}\b"),
        MASK,
    ),
    (
        "a presigned URL's signature or session token",
        re.compile(
            r"(?i)([?&](?:x-amz-(?:signature|security-token|credential)|signature|"
            r"awsaccesskeyid)=)(?!\*\*\*)" + _VALUE
        ),
        r"\1" + MASK,
    ),
    (
        # NAME=value, NAME: value, "NAME": "value", escaped quotes too (the quotes stay, so
        # JSON stays JSON); NAME as SECRET_NAME says, a *_PATH/_FILE/_MODE/_DIR excepted
        "a secret-looking NAME=value",
        re.compile(
            r"(?i)\b([a-z0-9_.-]*(?:secret|passw(?:or)?d|token|api[_-]?key|access[_-]?key|"
            r"private[_-]?key|credential)[a-z0-9_.-]*(?<![_-]path)(?<![_-]file)(?<![_-]mode)"
            r"(?<![_-]dir)(?:\\?[\"'])?\s*[=:]\s*(?:\\?[\"'])?)(?!\*\*\*)" + _VALUE
        ),
        r"\1" + MASK,
    ),
)


def _env_values(environ: Mapping[str, str] | None) -> list[str]:
    env = os.environ if environ is None else environ
    return [v for name in CREDENTIAL_ENV if len(v := env.get(name, "")) >= 6]


def redact(text: str, *, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every credential-looking part (module docstring) replaced by ``***``."""
    for value in _env_values(environ):
        text = text.replace(value, MASK)
    for _, pattern, repl in _FORMS:
        text = pattern.sub(repl, text)
    return text


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` for a log line: each item redacted, and the value after an option whose name
    says secret (``--secret-key VALUE``) masked whole."""
    out: list[str] = []
    mask_next = False
    for item in argv:
        if mask_next and not item.startswith("-"):
            out.append(MASK)
        else:
            out.append(redact(item))
        mask_next = item.startswith("-") and "=" not in item and is_secret_name(item)
    return out


def is_secret_name(name: str) -> bool:
    """Whether an env var, option or key named ``name`` holds a secret by its name."""
    bare = name.lstrip("-")
    return bool(SECRET_NAME.search(bare)) and not _NOT_SECRET.search(bare)


def findings(text: str, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """What credential-looking forms ``text`` holds (their descriptions, never the values)."""
    found = [what for what, pattern, _ in _FORMS if pattern.search(text)]
    if any(value in text for value in _env_values(environ)):
        found.append("the value of one of this shell's credential variables")
    return found


def secret_fields(values: Iterable[tuple[str, str]]) -> list[str]:
    """The names of the (name, value) pairs whose value looks like a credential, or whose
    name says secret and whose value is not empty."""
    return [
        name for name, value in values
        if (is_secret_name(name) and str(value).strip()) or findings(str(value))
    ]
