"""JSON in and out the way toxiproxy-server's Go ``encoding/json`` does it.

Decoding follows ``json.NewDecoder(body).Decode(&v)``: only the first JSON
value is read (trailing bytes are ignored), object keys match struct fields
case-insensitively, ``null`` leaves a field unchanged, a wrong type is an
error naming the Go struct field. Syntax errors are worded as Go's scanner
words them, naming the byte it stopped at the way Go's ``quoteChar`` does (the
byte read as the rune U+00XX: ``0xff`` is ``'ÿ'``, ``0x01`` is ``'\\x01'``).
Type errors follow Go 1.23 (toxiproxy-server 2.12.0's ``go`` line): the struct
is the innermost Go struct's name, the field the path of JSON names from the
decoded value, without the names of embedded structs (Go 1.24 adds those).
Encoding is compact, HTML-escaped, and prints float32 values with the shortest
representation (``1``, ``0.5``).
"""

from __future__ import annotations

import json
import math
import re
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
    if name.startswith("-"):  # -Infinity: Go's scanner wants a digit after the sign
        raise ValueError(f"invalid character '{name[1]}' in numeric literal")
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


_SPACE = " \t\r\n"
_HEX = frozenset("0123456789abcdefABCDEF")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_LITERALS = {"n": "null", "t": "true", "f": "false"}


class _UnexpectedEOF(Exception):
    pass


def decode_body(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` or raise a 400 ApiError."""
    # surrogateescape: one character per invalid byte, so an error can name the byte
    # Go stopped at, and a string gets one U+FFFD per invalid byte (clean_str), as in Go.
    text = body.decode("utf-8", errors="surrogateescape").lstrip(_SPACE)
    if not text:
        raise ApiError(400, "bad request body: EOF")
    message: str | None
    try:
        try:
            value, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError as exc:
            message = _syntax_error(text, exc.msg, exc.pos)
        else:
            is_number = isinstance(value, FloatLit) or (
                isinstance(value, int) and not isinstance(value, bool)
            )
            message = _number_goes_on(text, end) if is_number else None
            if message is None:
                return value
    except _UnexpectedEOF:
        message = "unexpected EOF"
    except RecursionError:
        message = "exceeded max depth"
    except ValueError as exc:  # NaN, Infinity, -Infinity
        message = str(exc)
    raise ApiError(400, f"bad request body: {message}")


def _syntax_error(text: str, msg: str, pos: int) -> str:
    """Go's scanner error for the place where Python's decoder gave up.

    Python stops at the same byte as Go, or (inside a literal, a number or an
    escape) a few bytes earlier: look ahead like Go's state machine would.
    """
    if pos >= len(text) or msg.startswith("Unterminated string"):
        raise _UnexpectedEOF
    char = text[pos]
    if msg.startswith("Expecting value"):
        word = _LITERALS.get(char)
        if word is not None:
            for offset in range(1, len(word)):
                if _at(text, pos + offset) != word[offset]:
                    return _invalid(
                        text, pos + offset, f"in literal {word} (expecting '{word[offset]}')"
                    )
        if char == "-":
            return _invalid(text, pos + 1, "in numeric literal")
        return _invalid(text, pos, "looking for beginning of value")
    if msg.startswith("Expecting property name"):
        return _invalid(text, pos, "looking for beginning of object key string")
    if msg.startswith("Illegal trailing comma"):  # Python 3.13+, reported at the comma
        after = pos + 1
        while after < len(text) and text[after] in _SPACE:
            after += 1
        if "object" in msg:
            return _invalid(text, after, "looking for beginning of object key string")
        return _invalid(text, after, "looking for beginning of value")
    if msg.startswith("Expecting ':'"):
        return _invalid(text, pos, "after object key")
    if msg.startswith("Expecting ','"):
        goes_on = _number_goes_on(text, pos)
        if goes_on is not None:
            return goes_on
        if _innermost(text, pos) == "[":
            return _invalid(text, pos, "after array element")
        return _invalid(text, pos, "after object key:value pair")
    if msg.startswith("Invalid control character"):
        return _invalid(text, pos, "in string literal")
    if msg.startswith("Invalid \\escape"):
        return _invalid(text, pos + 1 if char == "\\" else pos, "in string escape code")
    if msg.startswith("Invalid \\u"):
        start = pos + 1 if char == "\\" else pos  # at the "u"
        for index in range(start + 1, start + 5):
            if _at(text, index) not in _HEX:
                return _invalid(text, index, "in \\u hexadecimal character escape")
    return _invalid(text, pos, "looking for beginning of value")


def _at(text: str, index: int) -> str:
    if index >= len(text):
        raise _UnexpectedEOF
    return text[index]


def _number_goes_on(text: str, end: int) -> str | None:
    """Go's error when the number ending before ``end`` continues where Python stopped.

    Python leaves a ``.`` without digits, or an ``e`` without exponent digits,
    unread; Go's scanner has already committed to the number there.
    """
    if end >= len(text):
        return None
    start = end
    while start > 0 and text[start - 1] in "0123456789+-.eE":
        start -= 1
    literal = text[start:end]
    if not _NUMBER.fullmatch(literal):
        return None
    char = text[end]
    if char == "." and not any(c in literal for c in ".eE"):
        return _invalid(text, end + 1, "after decimal point in numeric literal")
    if char in "eE" and not any(c in literal for c in "eE"):
        index = end + 1
        if _at(text, index) in "+-":
            index += 1
        return _invalid(text, index, "in exponent of numeric literal")
    return None


def _innermost(text: str, end: int) -> str | None:
    """The innermost ``[`` or ``{`` still open before ``end`` (a valid JSON prefix)."""
    stack: list[str] = []
    for match in _STRING_OR_BRACKET.finditer(text, 0, end):
        token = match.group()
        if token in ("[", "{"):
            stack.append(token)
        elif token in ("]", "}"):
            stack.pop()
    return stack[-1] if stack else None


def _invalid(text: str, index: int, context: str) -> str:
    first_byte = _at(text, index).encode("utf-8", errors="surrogateescape")[0]
    return f"invalid character {_go_char(first_byte)} {context}"


#: strconv.Quote's short escapes
_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _go_char(byte: int) -> str:
    """Go's ``quoteChar``: ``strconv.Quote(string(c))`` for a byte ``c``, in single quotes.

    ``string(c)`` reads the byte as the rune U+00XX, so 0xEF (a UTF-8 BOM's first
    byte) prints as ``'ï'`` and 0xFF as ``'ÿ'``; what ``strconv.IsPrint`` refuses is
    escaped: ``\\n``-style, ``\\xNN`` below 0x20 and for 0x7F, ``\\u00NN`` above.
    """
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    if byte == 0x5C:
        return "'\\\\'"
    if 0x20 <= byte <= 0x7E or (0xA1 <= byte <= 0xFF and byte != 0xAD):
        return f"'{chr(byte)}'"
    if byte in _ESCAPES:
        return f"'{_ESCAPES[byte]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    return f"'\\u{byte:04x}'"


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


def _type_error(what: str, struct_name: str, field: str, go_type: str) -> ApiError:
    return ApiError(
        400,
        f"bad request body: json: cannot unmarshal {what} into Go struct field "
        f"{struct_name}.{field} of type {go_type}",
    )


def convert(value: Any, go_type: str, struct_name: str, field: str) -> Any:
    """Convert one decoded JSON value to ``go_type``.

    ``string``, ``bool``, ``int64``/``int``, ``float32``; any other name is a Go
    struct whose fields are all unexported (an object is accepted and ignored).
    A value of the wrong JSON kind is named by its kind (``number``); a number
    that does not fit the numeric type is named with its literal (``number 1.5``),
    as Go's ``literalStore`` does.
    """
    kind = json_kind(value)
    if go_type == "string":
        if kind != "string":
            raise _type_error(kind, struct_name, field, go_type)
        return clean_str(value)
    if go_type == "bool":
        if kind != "bool":
            raise _type_error(kind, struct_name, field, go_type)
        return value
    if go_type in ("int64", "int"):  # Go's int is 64-bit on every toxiproxy-server build
        if kind != "number":
            raise _type_error(kind, struct_name, field, go_type)
        if isinstance(value, FloatLit) or not INT64_MIN <= value <= INT64_MAX:
            raise _type_error(f"number {value}", struct_name, field, go_type)
        return value
    if go_type == "float32":
        if kind != "number":
            raise _type_error(kind, struct_name, field, go_type)
        try:
            number = float32(float(value))
            if math.isinf(number):
                raise OverflowError
            return number
        except (OverflowError, ValueError):
            raise _type_error(f"number {value}", struct_name, field, go_type) from None
    if kind != "object":
        raise _type_error(kind, struct_name, field, go_type)
    return value


def decode_fields(
    value: Any,
    fields: dict[str, str],
    struct_name: str,
    go_value_type: str,
    path: str = "",
) -> dict[str, Any]:
    """Decode a JSON object into the given ``{field: go_type}`` struct.

    Returns only the fields present (and not null). Keys match
    case-insensitively, an exact match winning, like Go. ``struct_name`` is the
    Go struct's name ("" for an anonymous struct) and ``path`` the JSON path to
    it from the decoded value (``"attributes."``), as type errors print them;
    ``go_value_type`` is the type a non-object ``value`` is reported against.
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
            out[name] = convert(item, go_type, struct_name, path + name)
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
