"""Internal. Request validation against the API description, ``openapi.yaml``, with openapi-core.

openapi-core comes with the ``testing`` extra. Without it the server still runs, without this
check: :func:`load_validator` says which applies.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from ._routes import Reply, error, load_json

if TYPE_CHECKING:
    from openapi_core import OpenAPI
    from openapi_core.datatypes import RequestParameters

#: The OpenAPI description the server validates requests against.
SPEC_PATH: Final = Path(__file__).with_name("openapi.yaml")

#: What to install for validation; named by every message about its absence.
EXTRA_HINT: Final = "pip install 'flameup-analytics[testing]'"

# The server stands in for the documented API, so requests are checked as if they
# had been addressed to its documented base, whatever address the server listens on.
_API_ORIGIN = "https://api.flameup.ai"
# Validator messages quote the offending value, which can be as large as the body.
_MAX_REASON = 1000


def load_validator(validate: bool | None) -> Validator | None:
    """The validator to use, or None for no validation.

    ``validate=None`` validates when openapi-core can be imported, ``True`` requires it
    (:class:`ImportError` naming the extra otherwise), ``False`` never validates.
    """
    if validate is False:
        return None
    try:
        return Validator.get()
    except ImportError:
        if validate:
            raise
        return None


class Validator:
    """openapi-core over openapi.yaml: loaded once per process, shared by every server.

    openapi-core is imported only here, on first use: it takes about half a second to
    import, which code that merely imports this package should not pay.
    """

    _lock = threading.Lock()
    _loaded: Validator | None = None

    def __init__(self) -> None:
        try:
            from openapi_core import Config, OpenAPI
            from openapi_core.datatypes import RequestParameters
            from werkzeug.datastructures import Headers, ImmutableMultiDict
        except ImportError as exc:
            raise ImportError(
                f"validating requests against openapi.yaml needs openapi-core: {EXTRA_HINT}"
            ) from exc
        config = Config(
            # tests/test_openapi.py checks the file; checking it again costs every process 0.2 s.
            spec_validator_cls=None,
            extra_media_type_deserializers={"application/json": load_json},
        )
        self.openapi: OpenAPI = OpenAPI.from_file_path(str(SPEC_PATH), config=config)
        self._parameters = RequestParameters
        self._headers = Headers
        self._multidict = ImmutableMultiDict
        # The validator's schema lookups share caches that were not written for
        # concurrent use; validation is CPU-bound, so serializing it costs no throughput.
        self._validate_lock = threading.Lock()

    @classmethod
    def get(cls) -> Validator:
        with cls._lock:
            if cls._loaded is None:
                cls._loaded = cls()
            return cls._loaded

    @classmethod
    def after_fork_in_child(cls) -> None:
        # A lock held by another thread at fork() would stay locked forever in the child.
        cls._lock = threading.Lock()
        if cls._loaded is not None:
            cls._loaded._validate_lock = threading.Lock()

    def check(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Reply | None:
        """The error reply for a request that does not conform, else None."""
        request = _SpecRequest(
            method=method.lower(),
            path=path,
            body=body,
            content_type=headers.get("content-type", "").lower(),
            parameters=self._parameters(
                query=self._multidict(parse_qsl(query, keep_blank_values=True)),
                header=self._headers(headers),
            ),
        )
        with self._validate_lock:
            problem = next(iter(self.openapi.iter_request_errors(request)), None)
        return None if problem is None else _explain(problem)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=Validator.after_fork_in_child)


@dataclass(slots=True)
class _SpecRequest:
    """A request as openapi-core's Request protocol wants it."""

    method: str
    path: str
    body: bytes
    content_type: str
    parameters: RequestParameters
    host_url: str = _API_ORIGIN


def _explain(problem: Exception) -> Reply:
    """The reply to a request openapi-core refused: its reason, naming the field at fault."""
    from openapi_core.deserializing.media_types.exceptions import MediaTypeDeserializeError
    from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
    from openapi_core.templating.paths.exceptions import OperationNotFound, PathError
    from openapi_core.validation.request.exceptions import (
        MissingParameterError,
        MissingRequestBodyError,
        ParameterValidationError,
        RequestBodyValidationError,
        SecurityValidationError,
    )

    cause = problem.__cause__
    # The server routes, authenticates and checks the media type itself before asking
    # the validator, so these first few only answer if the two ever disagree.
    if isinstance(problem, SecurityValidationError):
        return error(401, "missing or invalid API key", ("WWW-Authenticate", "Bearer"))
    if isinstance(problem, OperationNotFound):
        return error(405, f"not in the API description: {_text(problem)}")
    if isinstance(problem, PathError):
        return error(404, f"not in the API description: {_text(problem)}")
    if isinstance(cause, MediaTypeNotFound):
        return error(415, f"Content-Type must be one of {', '.join(cause.availableMimetypes)}")
    if isinstance(problem, MissingRequestBodyError):
        return error(400, "the request body is missing: it must be a JSON object")
    if isinstance(problem, MissingParameterError):
        return error(400, f"missing required {problem.location} parameter {problem.name!r}")
    if isinstance(problem, ParameterValidationError):
        subject = f"{problem.location} parameter {problem.name!r}"
    elif isinstance(problem, RequestBodyValidationError):
        subject = "request body"
    else:
        return error(400, _text(problem))
    schema_errors = getattr(cause, "schema_errors", None)
    if schema_errors:
        detail = "; ".join(_schema_error_text(schema_error) for schema_error in schema_errors)
    elif isinstance(cause, MediaTypeDeserializeError):
        # Its own text would decode the raw body, which fails for invalid UTF-8.
        detail = f"not valid JSON ({_text(cause.__cause__ or cause.__context__)})"
    else:
        detail = _text(cause) if cause is not None else _text(problem)
    return error(400, _shorten(f"invalid {subject}: {detail}"))


def _schema_error_text(schema_error: Any) -> str:  # a jsonschema ValidationError (untyped)
    # jsonschema's message names the value; json_path names where it is ("$" is the whole document).
    message = str(schema_error.message)
    path = str(schema_error.json_path)
    return message if path == "$" else f"{path}: {message}"


def _text(problem: BaseException | None) -> str:
    if problem is None:
        return "unknown reason"
    try:
        return str(problem) or type(problem).__name__
    except Exception:  # some validator errors fail to print themselves
        return type(problem).__name__


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_REASON else message[: _MAX_REASON - 1] + "…"
