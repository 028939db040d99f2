"""Turning the console's HTML forms into the API's own request models.

Each form is read once, with limits (fields, files, part sizes), into plain
values, then validated by the same pydantic model the JSON API validates
its body with; an error names the field as the API would.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from mailgate.api.schemas import MAX_ATTACHMENT_BYTES
from mailgate.errors import InvalidRequest, PayloadTooLarge

MAX_FIELDS = 100
MAX_FILES = 100


async def read_form(request: Request) -> FormData:
    try:
        return await request.form(
            max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_ATTACHMENT_BYTES
        )
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        raise InvalidRequest(f"the form could not be read: {exc}", field="form") from None


def text(form: FormData, name: str) -> str | None:
    """A text field, stripped; None when absent or empty (a file where text belongs is refused)."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text", field=name)
    value = value.strip()
    return value or None


def addresses(form: FormData, name: str) -> list[str]:
    """A field of addresses separated by commas or new lines."""
    value = text(form, name)
    if value is None:
        return []
    return [a.strip() for a in value.replace("\r", "").replace("\n", ",").split(",") if a.strip()]


def listed(form: FormData, name: str) -> list[str]:
    """Every value a repeated field (checkboxes, a multiple select) carries."""
    values = []
    for value in form.getlist(name):
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be text", field=name)
        if value.strip():
            values.append(value.strip())
    return values


async def attachments(form: FormData, name: str) -> list[dict[str, Any]]:
    """Uploaded files as the API's attachments (base64 content)."""
    found: list[dict[str, Any]] = []
    total = 0
    for upload in form.getlist(name):
        if not isinstance(upload, UploadFile) or not upload.filename:
            continue  # the browser sends an empty part when no file was chosen
        content = await upload.read()
        total += len(content)
        if total > MAX_ATTACHMENT_BYTES:
            raise PayloadTooLarge("attachments are over 25 MB in all", field="attachments")
        found.append(
            {
                "filename": upload.filename,
                "content_type": upload.content_type or "application/octet-stream",
                "content": base64.b64encode(content).decode(),
            }
        )
    return found


def when(value: str | None, field: str) -> datetime | None:
    """A `datetime-local` field (`2026-12-03T10:15`), taken as UTC, or RFC 3339."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{field}: not a date and time", field=field) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
