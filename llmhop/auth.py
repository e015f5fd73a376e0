"""Client authentication with bearer tokens (SPEC §2.2).

Tokens are compared as SHA-256 digests with C{hmac.compare_digest}, against
every configured token without stopping at a match: the time taken depends
neither on how much of a token was right nor on the tokens' lengths, so it
cannot be used to guess a token byte by byte.
"""

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@attrs.frozen
class Authenticator:
    digests: list[bytes] = attrs.field(repr=False)

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> "Authenticator":
        return cls([_digest(t.encode("ascii")) for t in tokens])

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def allows(self, authorization: Optional[Sequence[bytes]]) -> bool:
        """Whether the request's C{Authorization} header values grant access."""
        if not self.digests:
            return True
        if not authorization or len(authorization) != 1:
            return False
        scheme, _, token = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = _digest(token.strip())
        granted = False
        for digest in self.digests:
            granted |= hmac.compare_digest(presented, digest)
        return granted
