"""JSON in and out the way toxiproxy-server's Go ``encoding/json`` does it.

Decoding follows ``json.NewDecoder(body).Decode(&v)``: only the first JSON
value is read (trailing bytes are ignored), object keys match struct fields
case-insensitively, ``null`` leaves a field unchanged, a wrong type is an
error naming the Go struct field. Encoding is compact, HTML-escaped, and
prints float32 values with the shortest representation (``1``, ``0.5``).
"""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from typing import Any

__all__ = [
    "ApiError",
    "FloatLit",
    "decode_body",
    "decode_fields",
    "dumps",
    "float32",
    "format_float32",
    "json_kind",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class ApiError(Exception):
    """An error answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FloatLit(str):
    """A JSON number literal that is not a plain (small enough) integer."""

    __slots__ = ()


def _parse_int(literal: str) -> int | FloatLit:
    if len(literal) > 40:
        return FloatLit(literal)
    return int(literal)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(
    parse_float=FloatLit, parse_int=_parse_int, parse_constant=_reject_constant
)


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, FloatLit | int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_body(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` or raise a 400 ApiError."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise ApiError(400, "bad request body: EOF")
    try:
        value, _end = _DECODER.raw_decode(text)
    except RecursionError:
        raise ApiError(400, "bad request body: exceeded max depth") from None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise ApiError(400, "bad request body: unexpected EOF") from None
        char = text[exc.pos]
        if exc.msg.startswith("Expecting value"):
            msg = f"invalid character {_go_char(char)} looking for beginning of value"
        elif exc.msg.startswith("Expecting property name"):
            msg = f"invalid character {_go_char(char)} looking for beginning of object key string"
        elif exc.msg.startswith("Expecting ':'"):
            msg = f"invalid character {_go_char(char)} after object key"
        elif exc.msg.startswith("Expecting ','"):
            msg = f"invalid character {_go_char(char)} after object key:value pair"
        else:
            msg = f"invalid character {_go_char(char)} in string literal"
        raise ApiError(400, f"bad request body: {msg}") from None
    except ValueError as exc:
        raise ApiError(400, f"bad request body: {exc}") from None
    return value


def _go_char(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char.isprintable():
        return f"'{char}'"
    return repr(char)


def clean_str(value: str) -> str:
    """Replace lone surrogates (from ``\\ud800`` escapes) with U+FFFD, as Go does."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


def float32(value: float) -> float:
    """Round a float to float32 precision; OverflowError when out of range."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def _type_error(value: Any, struct_name: str, field: str, go_type: str) -> ApiError:
    kind = json_kind(value)
    if kind == "number":
        kind = f"number {value}"
    return ApiError(
        400,
        f"bad request body: json: cannot unmarshal {kind} into Go struct field "
        f"{struct_name}.{field} of type {go_type}",
    )


def convert(value: Any, go_type: str, struct_name: str, field: str) -> Any:
    """Convert one decoded JSON value to ``go_type`` (string, bool, int64, float32)."""
    if go_type == "string":
        if not isinstance(value, str) or isinstance(value, FloatLit):
            raise _type_error(value, struct_name, field, go_type)
        return clean_str(value)
    if go_type == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, struct_name, field, go_type)
        return value
    if go_type == "int64":
        if isinstance(value, bool) or not isinstance(value, int | FloatLit):
            raise _type_error(value, struct_name, field, go_type)
        if isinstance(value, FloatLit):
            raise _type_error(value, struct_name, field, go_type)
        if not INT64_MIN <= value <= INT64_MAX:
            raise _type_error(FloatLit(str(value)), struct_name, field, go_type)
        return value
    if go_type == "float32":
        if isinstance(value, bool) or not isinstance(value, int | FloatLit):
            raise _type_error(value, struct_name, field, go_type)
        try:
            number = float32(float(value))
            if math.isinf(number):
                raise OverflowError
            return number
        except (OverflowError, ValueError):
            raise _type_error(FloatLit(str(value)), struct_name, field, go_type) from None
    raise AssertionError(go_type)


def decode_fields(
    value: Any,
    fields: dict[str, str],
    struct_name: str,
    go_value_type: str,
) -> dict[str, Any]:
    """Decode a JSON object into the given ``{field: go_type}`` struct.

    Returns only the fields present (and not null). Keys match
    case-insensitively, an exact match winning, like Go.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"bad request body: json: cannot unmarshal {json_kind(value)} "
            f"into Go value of type {go_value_type}",
        )
    out: dict[str, Any] = {}
    first_error: ApiError | None = None
    lowered = {name.lower(): name for name in fields}
    for key, item in value.items():
        name = key if key in fields else lowered.get(key.lower())
        if name is None or item is None:
            continue
        go_type = fields[name]
        if go_type == "raw":
            out[name] = item
            continue
        try:
            out[name] = convert(item, go_type, struct_name, name)
        except ApiError as exc:
            if first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error
    return out


def format_float32(value: float) -> str:
    """Format a float32 the way Go's encoding/json does (shortest round trip)."""
    if value == 0:
        return "0"
    x32 = float32(value)
    digits = ""
    for precision in range(1, 10):
        candidate = f"{x32:.{precision}g}"
        if float32(float(candidate)) == x32:
            digits = candidate
            break
    absolute = abs(x32)
    if absolute < 1e-6 or absolute >= 1e21:
        mantissa, _, exponent = f"{Decimal(digits):e}".partition("e")
        exp = int(exponent)
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        if exp < 0:
            return f"{mantissa}e-{-exp}"
        return f"{mantissa}e+{exp:02d}"
    text = format(Decimal(digits), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class _Float32:
    """Marker for values that must be printed as float32."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, _Float32):
        out.append(format_float32(value.value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_string(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is None or isinstance(value, bool | int):
        out.append(json.dumps(value))
    elif isinstance(value, float):
        out.append(json.dumps(value) if math.isfinite(value) else "null")
    else:
        out.append(_string(str(value)))


def _string(value: str) -> str:
    text = json.dumps(clean_str(value), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def dumps(value: Any) -> bytes:
    """Compact Go-style JSON; wrap float32 numbers in :func:`f32`."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def f32(value: float) -> Any:
    return _Float32(value)
