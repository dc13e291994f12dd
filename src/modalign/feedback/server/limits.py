"""Request body limit, enforced before any parsing (pure ASGI middleware).

A declared Content-Length over the limit is refused without reading; a chunked body is read
up to the limit and refused as soon as it passes it. Accepted bodies are replayed to the app.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_BODY = 64 * 1024


class BodyLimit:
    """Answer 413 (JSON naming the body) to any request whose body exceeds `max_bytes`."""

    def __init__(self, app: Callable, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _refuse(send, 400, "Content-Length is not a number")
            if int(declared) > self.max_bytes:
                return await _refuse(send, 413, self._message(int(declared)))
        body, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await _refuse(send, 413, self._message(size, at_least=True))
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(body), receive), send)

    def _message(self, size: int, at_least: bool = False) -> str:
        return f"request body is {'over ' if at_least else ''}{size} bytes; the limit is {self.max_bytes} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail, "field": "body"}).encode()
    # Close the connection: the unread body would otherwise be taken for the next request.
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
