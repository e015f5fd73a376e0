"""Which model a request is for: the top-level ``model`` of its body (SPEC §2.4).

The router must pick exactly the model the backend will see, so the JSON path
agrees with C{json.loads}: the last duplicate key wins, escapes are decoded and
nested ``model`` keys are ignored.  For ``multipart/form-data`` (audio
transcription, image edits) the last ``model`` text field wins, as in the
form parsers that vLLM and the OpenAI-compatible servers use.
"""

import json
from email.message import Message
from typing import Optional

MULTIPART = b"multipart/form-data"


class ModelError(ValueError):
    """The body names no usable model; the message is safe to show the client."""


def extract_model(body: bytes, content_type: Optional[bytes]) -> str:
    if content_type is not None and _media_type(content_type) == MULTIPART:
        return _from_multipart(body, content_type)
    return _from_json(body)


def _media_type(content_type: bytes) -> bytes:
    return content_type.split(b";", 1)[0].strip().lower()


def _from_json(body: bytes) -> str:
    if not body:
        raise ModelError("The request needs a JSON body with a 'model' field.")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ModelError("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise ModelError("The request body must be a JSON object.")
    return _model_value(document.get("model", None), "model" in document)


def _model_value(value, present: bool) -> str:
    if not present:
        raise ModelError("The request body has no 'model' field.")
    if not isinstance(value, str):
        raise ModelError("The 'model' field must be a string.")
    return value


def _boundary(content_type: bytes) -> bytes:
    message = Message()
    message["content-type"] = content_type.decode("latin-1")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise ModelError("The multipart/form-data body has no valid boundary.")
    return boundary.encode("latin-1")


def _from_multipart(body: bytes, content_type: bytes) -> str:
    delimiter = b"--" + _boundary(content_type)
    found = None
    # The body is "--B\r\n<part>\r\n--B\r\n<part>\r\n--B--"; skipping from one
    # delimiter to the next with bytes.find keeps a 100 MiB upload cheap.
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if body.startswith(b"--", start):
            break
        head_start = body.find(b"\r\n", start)
        head_end = body.find(b"\r\n\r\n", start)
        end = body.find(b"\r\n" + delimiter, head_end)
        if head_start < 0 or head_end < 0 or end < 0:
            raise ModelError("The multipart/form-data body is malformed.")
        head = body[head_start + 2 : head_end]
        if b"model" in head.lower() and _field_name(head) == "model":
            found = body[head_end + 4 : end]
        pos = end + 2
    if found is None:
        raise ModelError("The multipart/form-data body has no 'model' field.")
    try:
        return found.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError("The 'model' field is not UTF-8.") from None


def _field_name(head: bytes) -> Optional[str]:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            message = Message()
            message["content-disposition"] = value.decode("latin-1").strip()
            if message.get_param("filename", header="content-disposition") is not None:
                return None
            field = message.get_param("name", header="content-disposition")
            return field if isinstance(field, str) else None
    return None
