"""JMAP core (RFC 8620): the request envelope, result references, method errors and limits.

This module is in charge of turning one API request (already parsed JSON) into method calls and
responses: checking the Request object (§3.3), the declared capabilities, the per-request limits
(maxCallsInRequest), resolving ``#``-prefixed arguments against earlier results with JSON Pointer and
the ``*`` extension (§3.7), and shaping method errors (§3.6.2). It has no network code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
CAPABILITIES_KNOWN = frozenset({CORE, MAIL, SUBMISSION, VACATION})

# Limits advertised in the session's core capability (RFC 8620 §2). Fastmail advertises 16 calls
# per request and 500 objects per get; Cyrus 50 and 4096. We take the generous side of the common
# values, bounded so one request cannot monopolise the process.
MAX_CALLS_IN_REQUEST = 64
MAX_OBJECTS_IN_GET = 1000
MAX_OBJECTS_IN_SET = 1000
MAX_CONCURRENT_REQUESTS = 8
MAX_CONCURRENT_UPLOAD = 4


class MethodError(Exception):
    """A method-level error (RFC 8620 §3.6.2): answered as ["error", {type, ...}, callId]."""

    def __init__(self, type_: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or type_)
        self.type = type_
        self.description = description
        self.extra = extra

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, **self.extra}
        if self.description:
            out["description"] = self.description
        return out


class RequestError(Exception):
    """A request-level error (RFC 8620 §3.6.1): an HTTP 400 problem details document (RFC 7807)."""

    def __init__(self, type_: str, detail: str, status: int = 400, limit: str | None = None) -> None:
        super().__init__(detail)
        self.type = type_
        self.detail = detail
        self.status = status
        self.limit = limit

    def problem(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": f"urn:ietf:params:jmap:error:{self.type}", "status": self.status,
                               "detail": self.detail}
        if self.limit:
            out["limit"] = self.limit
        return out


class Call:
    """What one request shares between its method calls: capabilities and creation ids (§5.3)."""

    def __init__(self, using: set[str], created_ids: dict[str, str]) -> None:
        self.using = using
        self.created_ids = created_ids

    def id(self, value: Any) -> Any:
        """An id argument, with "#creationId" replaced by the id created earlier in this request."""
        if isinstance(value, str) and value.startswith("#"):
            return self.created_ids.get(value[1:], value)
        return value


Method = Callable[[dict[str, Any], Call], Awaitable[dict[str, Any]]]


def check_request(request: Any) -> tuple[set[str], list[list[Any]], dict[str, str]]:
    if not isinstance(request, dict):
        raise RequestError("notRequest", "the request must be a JSON object")
    using = request.get("using")
    calls = request.get("methodCalls")
    created_ids = request.get("createdIds", {})
    if not isinstance(using, list) or not all(isinstance(u, str) for u in using):
        raise RequestError("notRequest", "'using' must be a list of capability strings")
    if not isinstance(calls, list):
        raise RequestError("notRequest", "'methodCalls' must be a list")
    if not isinstance(created_ids, dict):
        raise RequestError("notRequest", "'createdIds' must be an object")
    unknown = [u for u in using if u not in CAPABILITIES_KNOWN]
    if unknown:
        raise RequestError("unknownCapability", f"unknown capability: {', '.join(unknown)}")
    if len(calls) > MAX_CALLS_IN_REQUEST:
        raise RequestError("limit", f"at most {MAX_CALLS_IN_REQUEST} method calls per request",
                           limit="maxCallsInRequest")
    for call in calls:
        if (not isinstance(call, list) or len(call) != 3 or not isinstance(call[0], str)
                or not isinstance(call[1], dict) or not isinstance(call[2], str)):
            raise RequestError("notRequest", "each method call must be [name, arguments, callId]")
    return set(using), calls, dict(created_ids)


def _pointer(value: Any, path: str) -> Any:
    """RFC 6901 JSON Pointer with RFC 8620 §3.7's '*' (map over an array, flattening arrays)."""
    if path == "":
        return value
    if not path.startswith("/"):
        raise KeyError(path)
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]

    def walk(current: Any, rest: list[str]) -> Any:
        if not rest:
            return current
        token, tail = rest[0], rest[1:]
        if isinstance(current, list):
            if token == "*":
                out: list[Any] = []
                for item in current:
                    found = walk(item, tail)
                    if isinstance(found, list):
                        out.extend(found)
                    else:
                        out.append(found)
                return out
            if not token.isdigit() or int(token) >= len(current):
                raise KeyError(token)
            return walk(current[int(token)], tail)
        if isinstance(current, dict):
            if token not in current:
                raise KeyError(token)
            return walk(current[token], tail)
        raise KeyError(token)

    return walk(value, tokens)


def resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if not key.startswith("#"):
            out[key] = value
            continue
        name = key[1:]
        if name in args:
            raise MethodError("invalidArguments", f"both {name} and {key} given")
        if (not isinstance(value, dict) or not isinstance(value.get("resultOf"), str)
                or not isinstance(value.get("name"), str) or not isinstance(value.get("path"), str)):
            raise MethodError("invalidResultReference", f"{key} is not a ResultReference")
        source = next((r for r in responses if r[2] == value["resultOf"] and r[0] == value["name"]), None)
        if source is None:
            raise MethodError("invalidResultReference", f"no {value['name']} response with id {value['resultOf']}")
        try:
            out[name] = _pointer(source[1], value["path"])
        except KeyError:
            raise MethodError("invalidResultReference", f"path {value['path']} not found") from None
    return out


async def run(calls: list[list[Any]], using: set[str], methods: dict[str, tuple[str, Method]],
              created_ids: dict[str, str]) -> list[list[Any]]:
    """Run the method calls in order; each gets its own answer or error."""
    responses: list[list[Any]] = []
    call = Call(using, created_ids)
    for name, args, call_id in calls:
        entry = methods.get(name)
        if entry is None:
            responses.append(["error", {"type": "unknownMethod", "description": f"no method {name}"}, call_id])
            continue
        capability, method = entry
        if capability not in using:
            responses.append(["error", {"type": "unknownMethod",
                                        "description": f"{name} needs {capability} in 'using'"}, call_id])
            continue
        try:
            resolved = resolve_references(args, responses)
            result = await method(resolved, call)
        except MethodError as exc:
            responses.append(["error", exc.response(), call_id])
            continue
        # A method may add a second answer (Email/copy's onSuccessDestroyOriginal: an Email/set).
        implicit = result.pop("_implicit", None)
        responses.append([name, result, call_id])
        if implicit is not None:
            responses.append([implicit[0], implicit[1], call_id])
    return responses
