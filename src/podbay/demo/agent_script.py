"""The support agent that runs *inside* each pod (stdlib only): it is copied into the pod as a file.

It reads the customer's transactions from the pod's private SQLite database (seeding them on first use of
the volume), picks a resolution, logs the outcome to the database and prints it as JSON.
"""

import json
import os
import random
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (id INTEGER PRIMARY KEY, order_id INTEGER, amount_cents INTEGER,
                                         kind TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS interventions (id INTEGER PRIMARY KEY, pod TEXT, message TEXT, resolution TEXT,
                                          amount_cents INTEGER, at TEXT DEFAULT CURRENT_TIMESTAMP);
"""


def seed(db: sqlite3.Connection, customer: int) -> None:
    rng = random.Random(customer)  # the same customer always gets the same history
    for n in range(5):
        order = 1000 + customer * 10 + n
        amount = rng.randrange(500, 20000)
        status = "in_transit" if n == 3 else "delivered"
        db.execute(
            "INSERT INTO transactions (order_id, amount_cents, kind, status) VALUES (?, ?, 'charge', ?)",
            (order, amount, status),
        )
        if customer % 2 and n == 2:  # odd customers were charged twice for one order
            db.execute(
                "INSERT INTO transactions (order_id, amount_cents, kind, status) VALUES (?, ?, 'charge', 'delivered')",
                (order, amount),
            )


def decide(db: sqlite3.Connection, message: str) -> tuple[str, int]:
    """Resolve what the customer complains about, from what their transactions show."""
    text = message.lower()
    if "arrived" in text or "waiting" in text:
        late = db.execute("SELECT order_id FROM transactions WHERE status = 'in_transit' LIMIT 1").fetchone()
        if late:
            db.execute("UPDATE transactions SET status = 'reshipped' WHERE order_id = ?", (late[0],))
            return f"reship order {late[0]} by express", 0
    if any(word in text for word in ("charged twice", "double", "refund")):
        duplicates = db.execute(
            "SELECT order_id, amount_cents FROM transactions WHERE kind = 'charge' "
            "GROUP BY order_id, amount_cents HAVING COUNT(*) > 1"
        ).fetchall()
        refunded = {row[0] for row in db.execute("SELECT order_id FROM transactions WHERE kind = 'refund'")}
        for order, amount in duplicates:
            if order not in refunded:
                db.execute(
                    "INSERT INTO transactions (order_id, amount_cents, kind, status) VALUES (?, ?, 'refund', 'issued')",
                    (order, -amount),
                )
                return f"refund duplicate charge on order {order}", amount
        if duplicates:
            return "duplicate charge already refunded: send the refund confirmation", 0
    return "escalate to a human with a goodwill credit", 500


def main() -> None:
    context = json.loads(os.environ["PODBAY_CONTEXT"])
    db = sqlite3.connect(os.environ["PODBAY_DB_PATH"])
    with db:
        db.executescript(SCHEMA)
        seeded = db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] == 0
        if seeded:
            seed(db, context["customer"])
        resolution, amount = decide(db, context["message"])
        db.execute(
            "INSERT INTO interventions (pod, message, resolution, amount_cents) VALUES (?, ?, ?, ?)",
            (os.environ["PODBAY_POD_ID"], context["message"], resolution, amount),
        )
        history = db.execute("SELECT COUNT(*) FROM interventions").fetchone()[0]
    db.close()
    print(
        json.dumps(
            {
                "resolution": resolution,
                "amount_cents": amount,
                "seeded": seeded,
                "interventions_so_far": history,
            }
        )
    )


main()
