"""A job's inputs from where a client can put them: a JSON list, an uploaded JSONL or CSV file,
or an object in storage (Django's storage API: the file system or S3 through django-storages).

Every input is a JSON object (the model's schema is checked per task by the worker, so one bad
line costs one dead task, not the whole job). CSV: a header row names the fields; a cell that
is a number becomes one (a whole number within 64 bits, or a finite decimal; others stay
text), a cell that holds a JSON array or object (``"[0, 1, …]"``) is parsed. Every source is
read under the platform's JSON policy (``plumbing.untrusted``): a value PostgreSQL could not
store, an integer past 64 bits or nesting past ``API_JSON_MAX_DEPTH`` is a 422 naming the line
and field, never a row that fails to insert.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.files.storage import default_storage
from rest_framework import exceptions

from plumbing import untrusted


@dataclass(frozen=True)
class Inputs:
    items: list[dict[str, Any]]
    source: str
    digest: str  # sha256 of what the client sent (part of the idempotency fingerprint)


def _invalid(field: str, detail: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [detail]})


def _check_count(n: int, field: str) -> None:
    if n == 0:
        raise _invalid(field, "No inputs.")
    if n > settings.JOBS_MAX_INPUTS:
        raise _invalid(field, f"More than JOBS_MAX_INPUTS ({settings.JOBS_MAX_INPUTS}) inputs.")


def from_list(items: Any) -> Inputs:
    if not isinstance(items, list):
        raise _invalid("inputs", "Expected a list of JSON objects.")
    _check_count(len(items), "inputs")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _invalid(f"inputs[{i}]", "Expected a JSON object.")
    canonical = json.dumps(items, separators=(",", ":"), sort_keys=True).encode()
    return Inputs(items=items, source="inline", digest=hashlib.sha256(canonical).hexdigest())


def _refused(field: str, where: str, errors: dict[str, Any]) -> exceptions.ValidationError:
    """A 422 naming ``field``, with where in it (a line) and which values were refused."""
    detail = "; ".join(
        f"{path}: {reason}" if path else str(reason) for path, reason in errors.items()
    )
    return _invalid(field, f"{where}{detail}")


def _cell(value: str) -> Any:
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            return untrusted.loads(text)
        except (untrusted.Refused, untrusted.TooDeep):
            raise
        except ValueError:
            return value
    try:
        whole = int(text)
    except ValueError:
        pass
    else:
        return whole if untrusted.INT64_MIN <= whole <= untrusted.INT64_MAX else value
    try:
        number = float(text)
    except ValueError:
        return value
    return number if math.isfinite(number) else value  # "nan", "inf", "1e999": text


def _jsonl(lines: Iterable[str], field: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = untrusted.loads(line)
        except untrusted.Refused as exc:
            raise _refused(field, f"line {number}: ", exc.errors) from exc
        except untrusted.TooDeep as exc:
            raise _invalid(field, f"line {number}: {exc}") from exc
        except ValueError as exc:
            raise _invalid(field, f"line {number}: not JSON ({exc.args[0]}).") from exc
        if not isinstance(item, dict):
            raise _invalid(field, f"line {number}: expected a JSON object.")
        yield item


def _csv(text: str, field: str) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if not reader.fieldnames:
            raise _invalid(field, "The CSV file has no header row.")
        for row in reader:
            where = f"line {reader.line_num}: "
            if None in row:
                raise _invalid(field, f"{where}more cells than header fields.")
            try:
                item = {key: _cell(value) for key, value in row.items() if value is not None}
            except untrusted.Refused as exc:
                raise _refused(field, where, exc.errors) from exc
            except untrusted.TooDeep as exc:
                raise _invalid(field, f"{where}{exc}") from exc
            refused = untrusted.refusals(item)
            if refused:
                raise _refused(field, where, refused)
            yield item
    except csv.Error as exc:  # a cell past csv's field size limit, a stray quote
        raise _invalid(field, f"line {reader.line_num}: not CSV ({exc}).") from exc


def parse_bytes(raw: bytes, *, name: str, content_type: str, field: str) -> list[dict[str, Any]]:
    """JSONL (``.jsonl``/``.ndjson``), CSV (``.csv``) or a JSON list (``.json``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(field, "The file is not UTF-8.") from exc
    lowered = name.lower()
    if lowered.endswith(".csv") or content_type in ("text/csv", "application/csv"):
        items = list(_csv(text, field))
    elif lowered.endswith(".json") or content_type == "application/json":
        try:
            document = untrusted.loads(text)
        except untrusted.Refused as exc:
            raise _refused(field, "", exc.errors) from exc
        except untrusted.TooDeep as exc:
            raise _invalid(field, str(exc)) from exc
        except ValueError as exc:
            raise _invalid(field, "Not a JSON list of objects.") from exc
        try:
            items = from_list(document).items
        except exceptions.ValidationError as exc:
            raise _invalid(field, "Not a JSON list of objects.") from exc
    else:
        items = list(_jsonl(text.splitlines(), field))
    _check_count(len(items), field)
    return items


def from_upload(upload: Any) -> Inputs:
    raw = upload.read()
    items = parse_bytes(
        raw, name=upload.name or "", content_type=upload.content_type or "", field="file"
    )
    return Inputs(
        items=items,
        source=f"upload:{upload.name}"[:300],
        digest=hashlib.sha256(raw).hexdigest(),
    )


def storage_name(uri: str, tenant_slug: str) -> str:
    """The storage name a URI points at: ``storage://<name>``, or ``s3://<bucket>/<name>`` for
    the configured bucket. Only names under ``JOBS_INPUT_PREFIX/<tenant>/`` are readable: the
    same storage holds other tenants' inputs and results."""
    parsed = urlparse(uri)
    if parsed.scheme == "storage":
        name = (parsed.netloc + parsed.path).lstrip("/")
    elif parsed.scheme == "s3":
        bucket = getattr(default_storage, "bucket_name", None)
        if not bucket or parsed.netloc != bucket:
            raise _invalid("input_uri", "Only the configured storage bucket can be read.")
        name = parsed.path.lstrip("/")
    else:
        raise _invalid("input_uri", "Expected storage://<name> or s3://<bucket>/<name>.")
    prefix = f"{settings.JOBS_INPUT_PREFIX.strip('/')}/{tenant_slug}/"
    if not name.startswith(prefix) or ".." in name.split("/"):
        raise _invalid("input_uri", f"Inputs must be stored under {prefix}.")
    return name


def from_uri(uri: str, *, tenant_slug: str) -> Inputs:
    name = storage_name(uri, tenant_slug)
    if not default_storage.exists(name):
        raise _invalid("input_uri", f"No object {name} in storage.")
    with default_storage.open(name, "rb") as fh:
        raw = fh.read()
    items = parse_bytes(raw, name=name, content_type="", field="input_uri")
    return Inputs(items=items, source=uri[:300], digest=hashlib.sha256(uri.encode()).hexdigest())
