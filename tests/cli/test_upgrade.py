"""An operator's upgrade, as the `chatdock` command shows it: a database an older chatdock left is upgraded when a
command opens it, which says so before and after, and every fact its migration logs reaches the log, however
many are alike (the command's log holds back repeated lines, but not these)."""

from __future__ import annotations

import pytest

from chatdock.storage import NewMessage, open_store
from tests.storage.raw import run_sql
from tests.storage.test_lookalike_identifiers import CLEANING, engine, renamed
from tests.transports import run_cli

pytestmark = pytest.mark.process  # runs the chatdock command

LOOK_ALIKES = 5


async def test_an_upgrade_says_so_and_logs_each_look_alike_it_finds(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = engine(db)
    (cleaning,) = [m for m in module.MIGRATIONS if m.name == CLEANING]
    # a database from before the identifier rule, written by this code (so with the later migrations it needs)
    with monkeypatch.context() as patched:
        patched.setattr(module, "MIGRATIONS", tuple(m for m in module.MIGRATIONS if m is not cleaning))
        async with open_store(db) as store:
            for n in range(LOOK_ALIKES):
                for contact in (f"ann{n}", f"tmp{n}"):
                    await store.append_message(
                        "acme", NewMessage(contact_id=contact, channel="sms", role="user", content="hi")
                    )
    await run_sql(db, *(done for n in range(LOOK_ALIKES) for done in renamed(f"tmp{n}", f"ann{n}\ufe0f", n)))
    newest = max(m.version for m in module.MIGRATIONS)
    sqlite = not db.startswith("postgres")
    if sqlite:  # `chatdock check` reads it as it is, and says what opening it will do
        checked = run_cli("check", "--db", db)
        assert (checked.returncode, checked.stdout) == (
            0,
            f"ok: {db} is sound (schema version {cleaning.version - 1}: this chatdock upgrades it to {newest} when "
            "it opens it, one-way; back it up first: docs/operations.md, Upgrading)\n",
        )

    upgraded = run_cli("keys", "list", "--db", db)
    assert upgraded.returncode == 0, upgraded.stderr
    lines = upgraded.stderr.splitlines()
    assert [line for line in lines if "looks the same as" in line] == [
        line for n in range(LOOK_ALIKES) for line in lines if f"contact 'ann{n}\\ufe0f' of organization 'acme'" in line
    ]
    assert len([line for line in lines if "looks the same as" in line]) == LOOK_ALIKES  # none held back as a repeat
    said = [line.split(": ", 1)[1] for line in lines if "upgrad" in line]
    place = db if not db.startswith("postgres") else db.split("@", 1)[1].split("/", 1)[0]
    assert len(said) == 2 and all(place in line for line in said), lines
    assert said[0].endswith(
        f"upgrading the database from schema version {cleaning.version - 1} to {newest}; once done, an older "
        "chatdock refuses it (to go back, restore a copy taken before: docs/operations.md, Upgrading)"
    ), said
    assert said[1].endswith(f"upgraded the database, now at schema version {newest}"), said

    again = run_cli("keys", "list", "--db", db)  # nothing left to do: nothing said
    assert again.returncode == 0 and "upgrad" not in again.stderr and "looks the same" not in again.stderr
    if sqlite:
        assert run_cli("check", "--db", db).stdout == f"ok: {db} is sound\n"
        await run_sql(db, ("INSERT INTO schema_migrations VALUES ($1, 'of a newer chatdock', 0)", (newest + 1,)))
        assert run_cli("check", "--db", db).stdout == (
            f"ok: {db} is sound (schema version {newest + 1}, of a newer chatdock: this one, which knows up to "
            f"{newest}, refuses it)\n"
        )
