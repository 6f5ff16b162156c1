"""Test-local decoding of emulator images, for assertions only."""

from __future__ import annotations

from typing import Any


def decode_image(table: Any, image: bytes, null_map: str) -> dict[str, Any]:
    """Test-local inverse of the encoder, for assertions only (JSON values)."""
    import ebcdic  # noqa: F401

    row: dict[str, Any] = {}
    offset = 0
    for index, column in enumerate(table.columns):
        raw = image[offset : offset + column.storage]
        offset += column.storage
        if null_map and null_map[index] == "1":
            row[column.name] = None
            continue
        row[column.name] = column.json_value(_value(column, raw))
    assert offset == len(image), "image longer than the layout"
    return row


def _value(column: Any, raw: bytes) -> Any:
    from decimal import Decimal

    codec = f"cp{column.ccsid}"
    kind = column.type
    if kind == "CHAR":
        return raw.decode(codec)
    if kind == "VARCHAR":
        return raw[2 : 2 + int.from_bytes(raw[:2], "big")].decode(codec)
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return int.from_bytes(raw, "big", signed=True)
    if kind == "DECIMAL":
        digits = raw.hex()
        sign = -1 if digits[-1] in "bd" else 1
        return sign * Decimal(digits[:-1]).scaleb(-column.scale)
    if kind == "NUMERIC":
        digits = "".join(str(b & 0x0F) for b in raw)
        sign = -1 if raw[-1] >> 4 in (0xB, 0xD) else 1
        return sign * Decimal(digits).scaleb(-column.scale)
    text = raw.decode("cp037")
    if kind == "DATE":
        return text
    if kind == "TIME":
        return text.replace(".", ":")
    date, clock = text[:10], text[11:]
    return f"{date}T{clock[:8].replace('.', ':')}.{clock[9:]}"
