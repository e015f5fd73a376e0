"""Client authentication: the four credential headers, tokens and their scopes (SPEC §2.2, §7).

A client presents its token as C{Authorization: Bearer …} (OpenAI SDKs),
C{x-api-key} (Anthropic), C{x-goog-api-key} (Gemini) or C{api-key} (Azure
OpenAI).  When it sends more than one of them, every one must carry the
same token: two different tokens would leave it open which scope applies.

Tokens are compared as SHA-256 digests with C{hmac.compare_digest}, against
every configured token without stopping at a match: the time taken depends
neither on how much of a token was right, nor on which token matched, nor on
the tokens' lengths, so it cannot be used to guess a token byte by byte.
"""

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs
from twisted.web.http_headers import Headers

# Every header a client credential may come in (lower case); none of them is
# forwarded when llmhop checks tokens: they are the gateway's, not the backend's.
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key")


@attrs.frozen
class ClientToken:
    """One entry of C{authTokens}: the secret, the name it is logged under, the models it may use.

    @ivar models: exact names and C{*}-suffixed prefixes; None: every model.
    """

    token: str = attrs.field(repr=False)
    name: str
    models: Optional[tuple[str, ...]] = None

    def allows(self, model: str) -> bool:
        """Whether this token may use C{model} (a name as the client wrote it)."""
        if self.models is None:
            return True
        for pattern in self.models:
            if pattern.endswith("*"):
                if model.startswith(pattern[:-1]):
                    return True
            elif model == pattern:
                return True
        return False


# Who asked, when llmhop checks no tokens: anyone may use any model.
ANYONE = ClientToken("", "")


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@attrs.frozen
class Authenticator:
    """The configured tokens, as digests, and what each may do."""

    tokens: tuple[ClientToken, ...] = attrs.field(repr=False)
    digests: tuple[bytes, ...] = attrs.field(repr=False)

    @classmethod
    def from_tokens(cls, tokens: Iterable[ClientToken]) -> "Authenticator":
        tokens = tuple(tokens)
        return cls(tokens, tuple(_digest(t.token.encode("ascii")) for t in tokens))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def identify(self, headers: Headers) -> Optional[ClientToken]:
        """The token the request's credential headers present, L{ANYONE} without auth, or None: refused."""
        if not self.digests:
            return ANYONE
        presented = _presented(headers)
        if presented is None:
            return None
        digest = _digest(presented)
        found = -1
        for index, candidate in enumerate(self.digests):
            # Every digest is compared, whichever matched.
            if hmac.compare_digest(digest, candidate):
                found = index
        return self.tokens[found] if found >= 0 else None


def _presented(headers: Headers) -> Optional[bytes]:
    """The one token the credential headers carry, or None: none, malformed, or several that differ."""
    token: Optional[bytes] = None
    for name in CREDENTIAL_HEADERS:
        values = headers.getRawHeaders(name)
        if values is None:
            continue
        value = _credential(name, values)
        if value is None or (token is not None and value != token):
            return None
        token = value
    return token


def _credential(name: bytes, values: Sequence[bytes]) -> Optional[bytes]:
    if len(values) != 1:
        return None  # a header sent twice: which one counts is anyone's guess
    value = values[0].strip()
    if name == b"authorization":
        scheme, _, value = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        value = value.strip()
    return value or None
