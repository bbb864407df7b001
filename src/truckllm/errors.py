"""Errors a client sees. Every one is OpenAI-shaped: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from truckllm.providers.errors import error_body


class APIError(Exception):
    """An error answer for the client. ``message`` is client-facing; log detail goes elsewhere."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_
        self.headers = headers or []

        self._body: bytes | None = None
        self.recorded = False  # the API layer already put it in the request's record

    def with_body(self, body: bytes) -> APIError:
        """Answer with this exact (already OpenAI-shaped) body, e.g. a provider's refusal."""
        self._body = body
        return self

    def body(self) -> bytes:
        if self._body is not None:
            return self._body
        return error_body(self.message, self.status, self.code, self.param, self.type)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param, type_="invalid_request_error")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
        type_="invalid_request_error",
    )
