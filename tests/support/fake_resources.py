"""The fake upstream's non-inference endpoints: models, Message Batches and Files, in memory.

Also the two reply helpers every fake endpoint shares: a compact JSON body and the error
envelope whose `request_id` equals the `request-id` header.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aiohttp import web

from tests.support import anthropic_payloads as p

REQUEST_ID = web.RequestKey("request_id", str)
"""The id of one API request: the `request-id` header and any error body's `request_id`."""


def json_reply(
    obj: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Compact JSON with `content-type: application/json`, as the API sends it."""
    return web.Response(
        status=status,
        body=p.compact(obj).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )


def error_reply(
    request: web.Request,
    status: int,
    *,
    message: str | None = None,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The error envelope for `status`, with `x-should-retry: true` on 429 and 529."""
    body = p.error_envelope(status, request[REQUEST_ID], error_type=error_type, message=message)
    retry = {"x-should-retry": "true"} if status in (429, 529) else {}
    return json_reply(body, status, {**retry, **(headers or {})})


class FakeResources:
    """Models, batches and files; `base_url()` names the fake, for batches' `results_url`."""

    def __init__(
        self,
        base_url: Callable[[], str],
        reply_text: Callable[[], str],
        usage: Callable[[], Mapping[str, int]],
    ) -> None:
        self._base_url, self._reply_text, self._usage = base_url, reply_text, usage
        self.batches: dict[str, FakeBatch] = {}
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}

    def routes(self) -> list[web.RouteDef]:
        """Every route this class answers."""
        return [
            web.get("/v1/models", self._models),
            web.get("/v1/models/{id}", self._model),
            web.post("/v1/messages/batches", self._batch_create),
            web.get("/v1/messages/batches", self._batch_list),
            web.get("/v1/messages/batches/{id}", self._batch_get),
            web.post("/v1/messages/batches/{id}/cancel", self._batch_cancel),
            web.delete("/v1/messages/batches/{id}", self._batch_delete),
            web.get("/v1/messages/batches/{id}/results", self._batch_results),
            web.post("/v1/files", self._file_upload),
            web.get("/v1/files", self._file_list),
            web.get("/v1/files/{id}", self._file_get),
            web.get("/v1/files/{id}/content", self._file_content),
            web.delete("/v1/files/{id}", self._file_delete),
        ]

    async def _models(self, request: web.Request) -> web.Response:
        return json_reply(p.page([p.model_info(*row) for row in p.MODELS], request.query))

    async def _model(self, request: web.Request) -> web.Response:
        for row in p.MODELS:
            if row[0] == request.match_info["id"]:
                return json_reply(p.model_info(*row))
        return error_reply(request, 404, message=f"model: {request.match_info['id']}")

    async def _batch_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        batch = FakeBatch(p.new_id("msgbatch"), [dict(r) for r in body.get("requests", [])])
        self.batches[batch.id] = batch
        return json_reply(batch.to_json(self._base_url()))

    async def _batch_list(self, request: web.Request) -> web.Response:
        batches = [b.advance().to_json(self._base_url()) for b in reversed(self.batches.values())]
        return json_reply(p.page(batches, request.query))

    async def _batch_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error_reply(request, 404, message="Batch not found")
        return json_reply(batch.advance().to_json(self._base_url()))

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error_reply(request, 404, message="Batch not found")
        if batch.status == "in_progress":
            batch.status, batch.cancel_initiated_at = "canceling", p.utc_now()
        return json_reply(batch.to_json(self._base_url()))

    async def _batch_delete(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error_reply(request, 404, message="Batch not found")
        if batch.status != "ended":
            return error_reply(request, 400, message="Batch is still processing; cancel it first")
        del self.batches[batch.id]
        return json_reply({"id": batch.id, "type": "message_batch_deleted"})

    async def _batch_results(self, request: web.Request) -> web.StreamResponse:
        """Results as JSONL, one chunk per line."""
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.status != "ended":
            return error_reply(request, 404, message="Batch results are not available")
        response = web.StreamResponse(headers={"content-type": "application/binary"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for line in batch.result_lines(self._reply_text(), self._usage()):
            await response.write(line)
        return response

    async def _file_upload(self, request: web.Request) -> web.Response:
        part = multipart_file(request.headers.get("content-type", ""), await request.read())
        if part is None:
            return error_reply(request, 400, message="file: Field required")
        filename, mime_type, data = part
        meta = p.file_metadata(p.new_id("file"), filename, mime_type, len(data), p.utc_now())
        self.files[meta["id"]] = (meta, data)
        return json_reply(meta)

    async def _file_list(self, request: web.Request) -> web.Response:
        files = [meta for meta, _ in reversed(self.files.values())]
        return json_reply({**p.page(files, request.query), "next_page": None})

    async def _file_get(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return error_reply(request, 404, message="File not found")
        return json_reply(stored[0])

    async def _file_content(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return error_reply(request, 404, message="File not found")
        meta, data = stored
        return web.Response(body=data, headers={"content-type": str(meta["mime_type"])})

    async def _file_delete(self, request: web.Request) -> web.Response:
        if self.files.pop(request.match_info["id"], None) is None:
            return error_reply(request, 404, message="File not found")
        return json_reply({"id": request.match_info["id"], "type": "file_deleted"})


@dataclass(slots=True)
class FakeBatch:
    """A Message Batch that finishes between calls: the next read after create sees it ended."""

    id: str
    requests: list[dict[str, Any]]
    status: str = "in_progress"
    created_at: datetime = field(default_factory=p.utc_now)
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None

    def advance(self) -> FakeBatch:
        """End processing: every request succeeded, or was canceled if cancel came first."""
        if self.status != "ended":
            self.status, self.ended_at = "ended", p.utc_now()
        return self

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The batch object; `results_url` is absolute and points at this fake."""
        ended = self.status == "ended"
        outcome = "canceled" if self.cancel_initiated_at else "succeeded"
        return p.batch_object(
            self.id,
            status=self.status,
            counts={outcome if ended else "processing": len(self.requests)},
            created_at=self.created_at,
            results_url=f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
            ended_at=self.ended_at,
            cancel_initiated_at=self.cancel_initiated_at,
        )

    def result_lines(self, text: str, usage: Mapping[str, int]) -> list[bytes]:
        """One JSONL line per request, each ending in a newline."""
        lines = []
        for item in self.requests:
            result: dict[str, Any] = {"type": "canceled"}
            if not self.cancel_initiated_at:
                model = str(item.get("params", {}).get("model", p.DEFAULT_MODEL))
                result = {
                    "type": "succeeded",
                    "message": p.message_body(model, text, usage, p.new_id("msg")),
                }
            lines.append(p.compact({"custom_id": item["custom_id"], "result": result}) + "\n")
        return [line.encode() for line in lines]


def multipart_file(content_type: str, body: bytes) -> tuple[str, str, bytes] | None:
    """(filename, mime type, bytes) of the `file` part of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        assert isinstance(part, Message)
        if part.get_param("name", header="content-disposition") == "file":
            data = part.get_payload(decode=True)
            filename = part.get_filename() or "unnamed"
            return filename, part.get_content_type(), data if isinstance(data, bytes) else b""
    return None
