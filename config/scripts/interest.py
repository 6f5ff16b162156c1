"""message_interest: how urgent a change is for the hub, 0 (least) to 100.

Price changes and promotions are what the shelf labels show, so they come
first; stock levels next; article master data last. A delete weighs a little
more than the change it removes. The enricher maps the score to a lane
(enricher.lanes, default 70 and 30).
"""

BASE = {"PRIX": 80, "STOCK": 50, "ARTICLE": 30}
# Columns of MAG/PRIX that carry a promotion when set.
PROMO_FIELDS = ("PRIX_PROMO", "DEB_PROMO")


def _is_promo(change):
    image = change.get("after") or change.get("before") or {}
    for field in PROMO_FIELDS:
        value = image.get(field)
        if value not in (None, "", "0", 0, "N"):
            return True
    return False


def enrich(change):
    table = change["table"]
    score = BASE.get(table, 20)
    if table == "PRIX" and _is_promo(change):
        score = 90
    if change["op"] == "d":
        score += 10
    return min(score, 100)
