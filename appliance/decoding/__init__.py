"""Field decoders of the record-image decoder, one module per family of types.

:mod:`appliance.decoder` is the import surface; this package holds the pieces:
:mod:`.numbers` (packed, zoned, binary, float), :mod:`.text` (CCSIDs, CHAR,
VARCHAR, GRAPHIC, binary strings) and :mod:`.temporal` (DATE, TIME,
TIMESTAMP). Every field function takes the field's bytes and returns a JSON
value, or raises :class:`~appliance.decoding.numbers.FieldError`.
"""
