"""Every error llmhop itself produces, in one place.

Request errors are answered in OpenAI's shape so that SDKs show a useful
message: ``{"error": {"message", "type", "param", "code"}}``.  Config errors
carry the place in the config file they are about, so startup can fail with a
single line such as ``models.gpt-4o.url: not an http(s) URL``.
"""

import json
import sys
from typing import Optional

import attrs
from twisted.web import http


class ConfigError(Exception):
    """The config file is wrong at C{place}; C{str()} is the one line to show."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(place, message)
        self.place = place
        self.message = message

    def __str__(self) -> str:
        return "%s: %s" % (self.place, self.message) if self.place else self.message


class StartupError(Exception):
    """The router cannot start; C{str()} is the one line to show, naming the place and the fix."""


def tell(line: str) -> int:
    """Print the one line of a failed start or check on stderr; the exit status is 1."""
    sys.stderr.write("llmhop: %s\n" % (line,))
    return 1


@attrs.frozen
class ApiError:
    """An error response llmhop answers itself, without a backend."""

    status: int
    message: str
    type: str
    code: str
    param: Optional[str] = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode("ascii")


class Refusal(Exception):
    """An answer of llmhop's own, raised along a Deferred chain to the step that sends it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def bad_request(message: str, param: Optional[str] = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "invalid_request", param)


def unroutable_body(message: str, code: str, param: Optional[str]) -> ApiError:
    """A body whose model cannot be read: C{model_required}, or C{invalid_json} for a body that is not JSON."""
    return ApiError(400, message, "invalid_request_error", code, param)


def path_model_required() -> ApiError:
    return ApiError(
        400,
        "Name the model in the path: /route/<model>/<path> (a / in the name written %2F).",
        "invalid_request_error",
        "model_required",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        "The model %s does not exist or is not served here." % (json.dumps(model),),
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def method_not_allowed(allowed: bytes) -> ApiError:
    return ApiError(
        405,
        "Method not allowed here; use %s." % (allowed.decode("ascii"),),
        "invalid_request_error",
        "method_not_allowed",
        headers=((b"Allow", allowed),),
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Missing or invalid client token (send it as Authorization: Bearer, x-api-key, x-goog-api-key or api-key).",
        "invalid_request_error",
        "invalid_api_key",
        headers=((b"WWW-Authenticate", b"Bearer"),),
    )


def model_not_allowed(model: str) -> ApiError:
    """A token scope leaves C{model} out (SPEC §7)."""
    return ApiError(
        403,
        "This token may not use the model %s." % (json.dumps(model),),
        "invalid_request_error",
        "model_not_allowed",
        "model",
    )


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "Request body is larger than the %d bytes this gateway accepts." % (limit,),
        "invalid_request_error",
        "request_too_large",
    )


def head_too_large(max_bytes: int, max_fields: int) -> ApiError:
    """A request head over the channel's limits (C{totalHeadersSize}, C{maxHeaders}, C{MAX_LENGTH} a line)."""
    return ApiError(
        431,
        "The request's header fields are too large (%d bytes and %d fields at most)." % (max_bytes, max_fields),
        "invalid_request_error",
        "request_header_fields_too_large",
    )


def uri_too_long(max_bytes: int) -> ApiError:
    return ApiError(
        414,
        "The request line is longer than the %d bytes this gateway reads." % (max_bytes,),
        "invalid_request_error",
        "uri_too_long",
    )


def request_timeout() -> ApiError:
    return ApiError(
        408,
        "The request did not arrive in time.",
        "invalid_request_error",
        "request_timeout",
    )


def unsupported_encoding() -> ApiError:
    return ApiError(
        415,
        "Compressed request bodies are not supported; send the body uncompressed.",
        "invalid_request_error",
        "unsupported_content_encoding",
    )


def unsupported_transfer_coding() -> ApiError:
    return ApiError(
        501,
        "The only transfer coding accepted in a request is a single chunked.",
        "invalid_request_error",
        "unsupported_transfer_encoding",
    )


def invalid_path(message: str) -> ApiError:
    """A request target that could leave the backend's path prefix (SPEC §5)."""
    return ApiError(400, message, "invalid_request_error", "invalid_path")


def too_many_requests(model: str) -> ApiError:
    """The model's concurrency limit and its queue are full (OpenAI's rate-limit shape)."""
    return ApiError(
        429,
        "Too many requests for model %s at once; retry shortly." % (json.dumps(model),),
        "rate_limit_error",
        "rate_limit_exceeded",
        headers=((b"Retry-After", b"1"),),
    )


def model_unavailable(model: str, retry_after: int) -> ApiError:
    """Health checks took every replica of the model (and of its fallbacks) down."""
    return ApiError(
        503,
        "Model %s is unavailable: every replica is down. Retry later." % (json.dumps(model),),
        "api_error",
        "model_unavailable",
        headers=((b"Retry-After", b"%d" % (retry_after,)),),
    )


class Unavailable(Exception):
    """No replica of the route (nor of its fallbacks) is up; the failure an L{Attempts} ends with."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("every replica is down")
        self.retry_after = retry_after


def upstream_unreachable(model: str) -> ApiError:
    return ApiError(
        502,
        "The backend for model %s could not be reached." % (json.dumps(model),),
        "api_error",
        "upstream_unreachable",
    )


def upstream_bad_response(model: str) -> ApiError:
    return ApiError(
        502,
        "The backend for model %s sent an invalid response." % (json.dumps(model),),
        "api_error",
        "upstream_bad_response",
    )


def upstream_timeout(model: str) -> ApiError:
    return ApiError(
        504,
        "The backend for model %s did not answer in time." % (json.dumps(model),),
        "api_error",
        "upstream_timeout",
    )


# Reason phrases Twisted's table lacks (it would send "Unknown Status").
_REASONS = {429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


def respond(request: http.Request, error: ApiError) -> None:
    """Answer C{request} with C{error} and finish it."""
    body = error.body()
    request.setResponseCode(error.status, _REASONS.get(error.status))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    for name, value in error.headers:
        request.setHeader(name, value)
    request.write(body)
    request.finish()
