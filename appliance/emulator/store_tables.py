"""The emulated store's tables (ARTICLE, PRIX, STOCK) and its test data.

Together the three tables use every supported type: CHAR (CCSID 1147 and
297), VARCHAR, DECIMAL (packed), NUMERIC (zoned), SMALLINT, INTEGER,
BIGINT, DATE, TIME and TIMESTAMP, with null-capable fields in ARTICLE and
PRIX and none in STOCK (so its null map is empty).

Product names carry French accents; characters a column's CCSID cannot
represent (œ in 297/1147, € in 297) are spelled out by :func:`fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ebcdic  # noqa: F401  (registers cp297 and cp1147)

from appliance.emulator.layout import Column

if TYPE_CHECKING:
    from appliance.emulator.journal import Emulator

STORE = "MQ01"
ARTICLE = [
    Column("ARTNUM", "CHAR", 6),
    Column("EAN", "CHAR", 13),
    Column("LIBELLE", "VARCHAR", 40, ccsid=1147),
    Column("FAMILLE", "CHAR", 20, ccsid=297),
    Column("UNITE", "CHAR", 2),
    Column("RAYON", "SMALLINT"),
    Column("POIDS", "DECIMAL", 7, 3, nullable=True),
    Column("CREE_LE", "DATE"),
]
PRIX = [
    Column("ARTNUM", "CHAR", 6),
    Column("PRIX", "DECIMAL", 9, 2),
    Column("PRIX_PROMO", "DECIMAL", 9, 2, nullable=True),
    Column("DEB_PROMO", "DATE", nullable=True),
    Column("FIN_PROMO", "DATE", nullable=True),
    Column("HEURE_MAJ", "TIME"),
    Column("MAJ_LE", "TIMESTAMP"),
]
STOCK = [
    Column("ARTNUM", "CHAR", 6),
    Column("MAGASIN", "CHAR", 4),
    Column("QUANTITE", "NUMERIC", 9, 3),
    Column("SEUIL", "INTEGER"),
    Column("MOUVEMENTS", "BIGINT"),
    Column("DERN_MVT", "TIMESTAMP"),
]
TABLES = {
    "ARTICLE": (ARTICLE, ["ARTNUM"]),
    "PRIX": (PRIX, ["ARTNUM"]),
    "STOCK": (STOCK, ["ARTNUM", "MAGASIN"]),
}
PRODUCTS = (
    ("Crème fraîche épaisse 30%", "CRÉMERIE", "PC"),
    ("Pâté de campagne", "CHARCUTERIE", "KG"),
    ("Café moulu", "ÉPICERIE", "PC"),
    ("Rhum agricole 50°", "SPIRITUEUX", "L "),
    ("Bœuf haché 5% MG", "BOUCHERIE", "KG"),
    ("Pain de mie complet", "BOULANGERIE", "PC"),
    ("Thé à la menthe", "ÉPICERIE", "PC"),
    ("Jus de goyave", "BOISSONS", "L "),
    ("Crevettes décortiquées", "SURGELÉS", "KG"),
    ("Fromage à raclette", "CRÉMERIE", "KG"),
    ("Sirop de canne § bio", "ÉPICERIE", "L "),
    ("Offre spéciale 2€", "PROMOTIONS", "PC"),
    ("Chou de Chine", "FRUITS & LÉGUMES", "KG"),
    ("Bière blonde @ 33cl", "BOISSONS", "PC"),
    ("Morue salée", "POISSONNERIE", "KG"),
    ("Épices à colombo", "ÉPICERIE", "PC"),
)
PRICES = ("0.99", "1.49", "2.15", "3.99", "4.75", "6.90", "9.99", "12.50", "18.00")
JOBS = ("123456/POS/CAISSE01", "123457/POS/CAISSE02", "234567/GESTION/PRIXMAJ")


def create_store_tables(emu: Emulator) -> None:
    """ARTICLE, PRIX and STOCK in the store library (idempotent)."""
    for name, (columns, key) in TABLES.items():
        emu.create_table(name, columns, key)


def fit(text: str, ccsid: int) -> str:
    """``text`` with characters the CCSID lacks spelled out (œ -> oe) or '?'."""
    codec = f"cp{ccsid}"
    out = []
    for char in text:
        try:
            char.encode(codec)
        except UnicodeEncodeError:
            out.append({"œ": "oe", "Œ": "OE", "€": "EUR"}.get(char, "?"))
        else:
            out.append(char)
    return "".join(out)
