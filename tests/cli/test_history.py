"""`chatdock export` and `chatdock import`, run as the real command on real database files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sqlite3
import stat
import subprocess
import unicodedata
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from chatdock.storage import NewMessage, Part, open_store
from chatdock.storage.history import HISTORY_NAMESPACE
from chatdock.storage.store import HistorySnapshot
from tests.transports import call, chatdock_command, run_cli

pytestmark = pytest.mark.process  # each test here starts real processes

ODD_CONTACTS = ["+31 6 1234", "a/b", "%2F", "a@b.com", "🦜 parrot", "x" * 256]
UNKNOWN_CHAT = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7e"


def counts(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        return tuple(
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("messages", "chats", "contacts")
        )


async def seed(db: Path, messages: int = 1200) -> None:
    """Two organizations, odd contact ids, chats on several channels, parts with timestamps, metadata."""
    base = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    async with open_store(str(db)) as store:
        chat = await store.open_chat("acme", ODD_CONTACTS[0], "voice", "agent-7")
        await store.append_message(
            "acme",
            NewMessage(
                contact_id=ODD_CONTACTS[0], channel="widget", role="user", content="from the widget", chat_id=chat.id
            ),
        )
        await store.post_as_contact(
            "acme",
            ODD_CONTACTS[0],
            chat.id,
            [Part(text="hello", start_timestamp=0.25, end_timestamp=1.5), Part(text="it's me")],
            channel_id=chat.channels[0].id,
        )
        await store.update_chat("acme", chat.id, "COMPLETED")
        await store.open_chat("globex", "a@b.com", "web")
        batch = [
            NewMessage(
                contact_id=ODD_CONTACTS[i % len(ODD_CONTACTS)],
                channel="whatsapp" if i % 3 else "sms",
                role="user" if i % 2 else "assistant",
                content=f"message {i}\nSYSTEM: not a role line ✓" if i % 7 == 0 else f"message {i}",
                agent_id="agent-7" if i % 5 == 0 else None,
                metadata={"provider_message_id": f"wamid.{i}", "attachments": [{"url": f"https://x/{i}"}]}
                if i % 4 == 0
                else None,
                created_at=base + timedelta(seconds=i // 3),  # ties on purpose: order is kept by sequence
            )
            for i in range(messages)
        ]
        await store.import_messages("acme", batch[: messages // 2])
        await store.import_messages("globex", batch[messages // 2 :])


def export(db: Path, *args: str) -> str:
    done = run_cli("export", "--db", str(db), "-q", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def import_(db: Path | str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chatdock_command(), "import", "--db", str(db), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_export_import_export_round_trip_is_identical(tmp_path: Path) -> None:
    source, copy = tmp_path / "source.db", tmp_path / "copy.db"
    await seed(source)
    out = tmp_path / "history.jsonl"
    done = run_cli("export", "--db", str(source), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "exporting" in done.stderr and not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the whole history: its owner's only, as the database
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1200 + 2 + 2  # the seeded batch, two messages in a chat, two chats
    assert [json.loads(line)["kind"] for line in lines[:2]] == ["chat", "chat"]

    imported = import_(copy, str(out))
    assert imported.returncode == 0, imported.stderr
    assert "stored 1,202 message(s) and 2 chat(s), 0 already there, 0 skipped" in imported.stdout
    assert "importing" in imported.stderr  # the progress bar
    assert export(copy) == out.read_text(encoding="utf-8")
    assert counts(copy) == counts(source)

    again = import_(copy, str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert "stored 0 message(s) and 0 chat(s), 1,204 already there" in again.stdout
    assert counts(copy) == counts(source)
    assert export(copy) == out.read_text(encoding="utf-8")


async def test_imported_history_is_served_with_its_ids_times_and_channels(tmp_path: Path) -> None:
    source, copy = tmp_path / "source.db", tmp_path / "copy.db"
    await seed(source, messages=30)
    history = export(source, "--org", "acme", "--contact", ODD_CONTACTS[0])
    assert import_(copy, "-", "-q", stdin=history).returncode == 0
    chat = json.loads(history.splitlines()[0])
    async with Client(build_server(Settings(db=str(copy), org="acme"))) as client:
        context = await call(client, "get_context", include_messages=True, contact_id=ODD_CONTACTS[0])
        exported = sorted((json.loads(line) for line in history.splitlines()[1:]), key=lambda m: m["created_at"])
        assert [(m["id"], m["created_at"], m["content"]) for m in context["messages"]] == [
            (m["id"], m["created_at"], m["content"]) for m in exported
        ]
        chats = await call(client, "list_chats", contact_id=ODD_CONTACTS[0])
        assert chats["chats"] == [{k: v for k, v in chat.items() if k not in ("kind", "org")}]
        voice = next(c for c in chat["channels"] if c["name"] == "voice")
        posted = await call(
            client,
            "post_as_contact",
            contact_id=ODD_CONTACTS[0],
            chat_id=chat["id"],
            message=[{"type": "text", "text": "still here"}],
            channel_id=voice["id"],
        )
        assert posted["channel"] == "voice"


async def test_export_narrows_to_an_organization_and_a_contact(tmp_path: Path) -> None:
    db = tmp_path / "source.db"
    await seed(db, messages=60)
    every = [json.loads(line) for line in export(db).splitlines()]
    acme = [json.loads(line) for line in export(db, "--org", "acme").splitlines()]
    one = [json.loads(line) for line in export(db, "--org", "globex", "--contact", "a@b.com").splitlines()]
    assert {r["org"] for r in every} == {"acme", "globex"}
    assert acme == [r for r in every if r["org"] == "acme"]
    assert one == [r for r in every if r["org"] == "globex" and r["contact_id"] == "a@b.com"]
    assert one and one[0]["kind"] == "chat"
    for org in ("nobody", "ACME"):  # a mistyped organization is no empty export (exit 0), as -o would replace a
        nothing = run_cli("export", "--db", str(db), "-q", "--org", org)  # good file with it (found by a review)
        assert nothing.returncode == 2 and nothing.stdout == "", nothing
        assert f"nothing to export: the organization {org!r} has no chat, alias or message" in nothing.stderr
    async with open_store(str(db)) as store:
        await store.link_contacts("globex", "a@b.com", "+31655500000")
    aliased = [json.loads(line) for line in export(db, "--org", "globex", "--contact", "+31655500000").splitlines()]
    assert [r for r in aliased if r["kind"] != "alias"] == one  # named by its alias, the same contact's history
    assert [(r["contact_id"], r["identifier"]) for r in aliased if r["kind"] == "alias"] == [
        ("a@b.com", "+31655500000")
    ]
    unknown = run_cli("export", "--db", str(db), "-q", "--org", "globex", "--contact", "nobody@b.com")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "nobody@b.com" in unknown.stderr
    everywhere = [json.loads(line) for line in export(db, "--contact", "a@b.com").splitlines()]  # any organization
    assert {r["org"] for r in everywhere} == {"acme", "globex"}  # the id is a contact in both
    assert [r for r in everywhere if r["org"] == "globex" and r["kind"] != "alias"] == one
    for named in ("+31655500000", "nobody@b.com"):  # an alias needs its organization; an unknown id is no export
        refused = run_cli("export", "--db", str(db), "-q", "--contact", named)
        assert refused.returncode == 2 and refused.stdout == "", refused
        assert f"no chat, alias or message has the contact id {named!r} in any organization" in refused.stderr
        assert "--org" in refused.stderr


def good(i: int, **changes: object) -> str:
    line: dict[str, object] = {
        "contact_id": "+31600000001",
        "channel": "sms",
        "role": "user",
        "content": f"line {i}",
        "created_at": f"2025-01-01T00:00:{i:02d}Z",
    }
    line.update(changes)
    return json.dumps({k: v for k, v in line.items() if v is not ...})


BAD_LINES = {
    "{not json": "not valid JSON",
    good(0)[:-20]: "not valid JSON: Unterminated string starting at column",  # a line cut (was: a control character)
    "[1, 2]": "must be a JSON object",
    good(0, created_at=...): "created_at is missing",
    good(0, role="robot"): "role must be one of",
    good(0, content=" "): "content must not be only spaces and line breaks",
    good(0, content="x" * 40_000): "at most 32768 characters",
    good(0, created_at="2025-01-01T00:00:00"): "must carry a timezone",
    good(0, chat_id="0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"): "neither in the database nor on an earlier line",
    good(0, kind="contact"): "kind must be 'message', 'chat' or 'alias'",
    good(0, channel="WhatsApp!"): "channel must be a lower-case name",
    good(0, colour="red"): "colour is not a known field",
    good(0, contact_id="a\x00b"): "contact_id must not contain control characters",
    good(0, metadata={"provider_message_id": 7}): "provider_message_id",
    good(0, id="not-a-uuid"): "id must be a UUID",
    good(0, metadata={"note": "cut in an emoji \ud83d"}): "holds half of a character",  # (its id is made of it)
    # an imported line's parts are named as the file names them (post_as_contact's are its `message`)
    good(0, content=..., parts=[{"type": "text", "text": "a", "start_timestamp": 2, "end_timestamp": 1}]): (
        "parts[0].end_timestamp (1.0) must not be before start_timestamp (2.0)"
    ),
}


def bad_file(path: Path) -> dict[int, str]:
    """Good lines with every kind of bad line between them; the expected error text by line number."""
    expected: dict[int, str] = {}
    with path.open("wb") as out:
        out.write((good(1) + "\n").encode())
        for number, (line, problem) in enumerate(BAD_LINES.items(), start=2):
            out.write((line + "\n").encode())
            expected[number] = problem
        out.write(b'{"content": "\xff\xfe"}\n')
        expected[len(BAD_LINES) + 2] = "not UTF-8"
        out.write(b"\n")  # blank lines are skipped silently
        out.write((good(2) + "\n").encode())
    return expected


def test_one_bad_line_imports_nothing_and_every_bad_line_is_named(tmp_path: Path) -> None:
    db, path = tmp_path / "chatdock.db", tmp_path / "bad.jsonl"
    expected = bad_file(path)
    done = import_(db, str(path), "-q")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    for number, problem in expected.items():
        line = next((t for t in done.stderr.splitlines() if t.startswith(f"line {number}: ")), None)
        assert line is not None and problem in line, (number, problem, done.stderr)
    assert f"{len(expected)} bad line(s), so nothing was imported" in done.stderr and "--skip-invalid" in done.stderr
    assert not db.exists()  # nor a new database, empty


def test_skip_invalid_imports_the_rest_and_lists_what_it_skipped(tmp_path: Path) -> None:
    db, path = tmp_path / "chatdock.db", tmp_path / "bad.jsonl"
    expected = bad_file(path)
    done = import_(db, str(path), "-q", "--skip-invalid")
    assert done.returncode == 0, done.stderr
    skipped = [t for t in done.stderr.splitlines() if t.startswith("skipped line ")]
    assert [int(t.split()[2].rstrip(":")) for t in skipped] == sorted(expected)
    assert f"stored 2 message(s) and 0 chat(s), 0 already there, {len(expected)} skipped" in done.stdout
    assert counts(db)[0] == 2


async def test_an_id_of_another_organization_is_a_bad_line(tmp_path: Path) -> None:
    db = tmp_path / "chatdock.db"
    async with open_store(str(db)) as store:
        theirs = await store.append_message(
            "globex", NewMessage(contact_id="c", channel="sms", role="user", content="x")
        )
    done = import_(db, "-", "-q", "--org", "acme", stdin=good(1, id=theirs.id) + "\n" + good(2) + "\n")
    assert done.returncode == 2
    assert "line 1: message id" in done.stderr and "another organization" in done.stderr
    assert counts(db)[0] == 1


def test_a_hand_written_file_refused_in_a_second_organization_says_how_to_bring_it_there(tmp_path: Path) -> None:
    """Lines without ids get theirs from the line and the organization it names, which --org does not change:
    the same file imported with --org into a second organization meets its own ids. The refusal says how to
    get it there (name the organization on the lines, or CHATDOCK_ORG), not "leave id out" (it is out), and the
    way it names works."""
    db = tmp_path / "chatdock.db"
    lines = good(1) + "\n" + good(2) + "\n"
    assert import_(db, "-", "-q", stdin=lines).returncode == 0
    refused = import_(db, "-", "-q", "--org", "acme", stdin=lines)
    assert refused.returncode == 2
    said = refused.stderr.splitlines()[1]
    assert said.startswith("line 1: message id ") and "derived from this line (it has no id)" in said, said
    assert "leave id out" not in said
    assert '"org": "acme"' in said and "CHATDOCK_ORG=acme instead of passing --org" in said
    named = "".join(json.dumps({**json.loads(line), "org": "acme"}) + "\n" for line in lines.splitlines())
    assert import_(db, "-", "-q", stdin=named).returncode == 0
    done = subprocess.run(
        [*chatdock_command(), "import", "--db", str(db), "-", "-q"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CHATDOCK_ORG": "initech"},
    )
    assert done.returncode == 0, done.stderr
    assert counts(db)[0] == 6

    # the other way round: a file first imported with --org, then into the organization its lines name
    other = tmp_path / "other.db"
    assert import_(other, "-", "-q", "--org", "acme", stdin=lines).returncode == 0
    back = import_(other, "-", "-q", stdin=lines)
    assert back.returncode == 2 and "derived from this line (it has no id)" in back.stderr
    assert """give the line an "id" of its own""" in back.stderr


def test_an_import_names_the_organizations_it_stored_in(tmp_path: Path) -> None:
    """Without --org each line goes where its `org` says, any organization of the database: the summary named
    none, so a customer's file naming another's organization went unnoticed (found by a security review)."""
    db = tmp_path / "chatdock.db"
    lines = [json.loads(good(i)) for i in range(3)]
    lines[2]["org"] = "beta"
    done = import_(db, "-", "-q", stdin="".join(json.dumps(line) + "\n" for line in lines))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "read 3 line(s): stored 3 message(s) and 0 chat(s), 0 already there, 0 skipped; "
        'stored in "beta" 1, "default" 2\n'
    )
    again = import_(db, "-", "-q", stdin=json.dumps(lines[0]) + "\n")
    assert again.stdout == "read 1 line(s): stored 0 message(s) and 0 chat(s), 1 already there, 0 skipped\n"


def test_hand_written_lines_without_ids_are_stored_once_however_often_imported(tmp_path: Path) -> None:
    db = tmp_path / "chatdock.db"
    lines = "\n".join(good(i) for i in range(5)) + "\n"
    first = import_(db, "-", "-q", stdin=lines)
    assert first.returncode == 0, first.stderr
    assert "stored 5 message(s)" in first.stdout
    second = import_(db, "-", "-q", stdin=lines)
    assert "stored 0 message(s) and 0 chat(s), 5 already there" in second.stdout
    assert counts(db)[0] == 5
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT o.name FROM orgs o JOIN messages m ON m.org_id = o.id LIMIT 1").fetchone() == (
            "default",
        )


def test_org_moves_a_whole_file_into_one_organization(tmp_path: Path) -> None:
    db = tmp_path / "chatdock.db"
    lines = good(1, org="elsewhere") + "\n" + good(2) + "\n"
    assert import_(db, "-", "-q", "--org", "acme", stdin=lines).returncode == 0
    orgs = {json.loads(line)["org"] for line in export(db).splitlines()}
    assert orgs == {"acme"}
    again = import_(db, "-", "-q", "--org", "acme", stdin=lines)
    assert "stored 0 message(s) and 0 chat(s), 2 already there" in again.stdout, again.stderr
    # a line's id is derived from the line and the organization it names, as earlier versions derived it (a
    # file imported with --org before is found again, not stored twice)
    fields = {k: v for k, v in json.loads(good(2)).items()}
    derived = uuid.uuid5(HISTORY_NAMESPACE, json.dumps(["default", fields], sort_keys=True, ensure_ascii=False))
    assert str(derived) in {json.loads(line)["id"] for line in export(db).splitlines()}
    other = tmp_path / "other.db"
    for _ in range(2):  # an organization's name typed two ways (macOS types an accent apart) is one
        done = import_(other, "-", "-q", "--org", unicodedata.normalize("NFD", "café"), stdin=lines)
        assert done.returncode == 0, done.stderr
    assert "stored 0 message(s)" in done.stdout and "2 already there" in done.stdout
    theirs = [json.loads(line)["org"] for line in export(other, "--org", "café").splitlines()]
    assert theirs == ["café", "café"]


async def test_a_file_names_its_contacts_in_any_spelling_and_imports_again_after_a_merge(tmp_path: Path) -> None:
    db, saved = tmp_path / "chatdock.db", tmp_path / "saved.jsonl"
    async with open_store(str(db)) as store:
        chat = await store.open_chat("acme", "+31612345678", "voice")
        await store.append_message(
            "acme", NewMessage(contact_id="+31612345678", channel="voice", role="user", content="hi", chat_id=chat.id)
        )
        await store.link_contacts("acme", "+31612345678", "ann@example.com")
    saved.write_text(export(db))
    async with open_store(str(db)) as store:
        await store.link_contacts("acme", "crm-1", "+31612345678")  # merged into another contact since the export
    again = import_(db, str(saved), "-q")
    assert again.returncode == 0 and "3 already there, 0 skipped" in again.stdout, again.stderr + again.stdout
    nfd, nfc = unicodedata.normalize("NFD", "josé@example.com"), "josé@example.com"
    new_chat = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"
    lines = [
        {"kind": "chat", "org": "acme", "id": new_chat, "contact_id": nfd, "created_at": "2025-01-01T00:00:00Z",
         "channels": [{"name": "web", "kind": "custom"}]},
        good(3, org="acme", contact_id=nfc, chat_id=new_chat, channel="web"),  # the contact spelled in NFC
        good(4, org="acme", contact_id="ann@example.com", chat_id=chat.id, channel="voice"),  # by an alias
    ]  # fmt: skip
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    forward = [  # a contact named by an alias that only a later line links: refused, nothing imported
        {"kind": "chat", "org": "acme", "id": UNKNOWN_CHAT, "contact_id": "bob", "created_at": "2025-01-01T00:00:00Z",
         "channels": [{"name": "web", "kind": "custom"}]},
        good(5, org="acme", contact_id="robert", chat_id=UNKNOWN_CHAT, channel="web"),
        {"kind": "alias", "org": "acme", "contact_id": "bob", "identifier": "robert",
         "created_at": "2025-01-01T00:00:00Z"},
    ]  # fmt: skip
    ahead = import_(db, "-", "-q", stdin="\n".join(x if isinstance(x, str) else json.dumps(x) for x in forward) + "\n")
    assert ahead.returncode == 2 and f"line 2: chat {UNKNOWN_CHAT} is not a chat of contact robert" in ahead.stderr
    for stored in ("stored 2 message(s) and 1 chat(s), 0 already there", "stored 0 message(s) and 0 chat(s), 3"):
        done = import_(db, "-", "-q", stdin=text)
        assert done.returncode == 0 and stored in done.stdout, done.stderr + done.stdout
    async with open_store(str(db)) as store:
        assert (await store.get_contact("acme", nfd)).message_count == 1
        assert (await store.get_contact("acme", "ann@example.com")).contact_id == "crm-1"


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    done = import_(tmp_path / "chatdock.db", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert "no such file" in done.stderr and "Traceback" not in done.stderr


async def test_export_and_check_refuse_in_one_line_and_leave_every_file_as_it_was(tmp_path: Path) -> None:
    """Nothing created on a mistyped path, nothing added to another program's database, and what cannot be
    written said in one line (a reader that goes away, `| head`, is no error to report)."""
    db = tmp_path / "chatdock.db"
    lines = (good(0, content=f"line {i} " + "x" * 200) for i in range(3000))  # 0.7 MB: more than a pipe holds
    assert import_(db, "-", "-q", stdin="".join(line + "\n" for line in lines)).returncode == 0
    foreign = tmp_path / "theirs.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    cases = [
        (["export", "--db", str(tmp_path / "typo.db")], f"there is no database at {tmp_path / 'typo.db'}"),
        (["keys", "list", "--db", str(tmp_path / "typo.db")], "there is no database at"),
        (["export", "--db", str(foreign)], f"{foreign} is a SQLite database of another program (its tables: invoices)"),
        (["serve", "--db", str(foreign)], "is a SQLite database of another program"),
        (["export", "--db", str(db), "-o", str(tmp_path / "no" / "x.jsonl")], f"there is no folder {tmp_path / 'no'}"),
        (["export", "--db", str(db), "-o", str(tmp_path)], "it is a folder; name a file with -o"),
        (["check", "--db", str(tmp_path)], "it is a folder; pass the database file with --db"),
        (["check", "--db", str(foreign.with_suffix(".txt"))], "there is no such file"),
        (["check", "--db", str(foreign)], f"{foreign} is a SQLite database of another program"),  # not "ok"
    ]  # fmt: skip
    foreign.with_suffix(".txt").unlink(missing_ok=True)
    for command, said in cases:
        done = run_cli(*command, "-q") if command[0] == "export" else run_cli(*command)
        assert done.returncode == 2 and done.stdout == "", (command, done.stdout)
        assert done.stderr.splitlines() == [f"chatdock: {done.stderr.strip().removeprefix('chatdock: ')}"]
        assert said in done.stderr, (command, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("chatdock.db")) == ["theirs.db"]
    with sqlite3.connect(foreign) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    conn.close()
    export_command = [*chatdock_command(), "export", "--db", str(db), "-q"]
    with open("/dev/full", "w") as full:  # a disk that is full
        done = subprocess.run(export_command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (2, "chatdock: cannot write the export to standard output: No space "
                                                 "left on device\n")  # fmt: skip
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    done = subprocess.run(
        export_command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True, timeout=60, check=False
    )
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait(10)
    assert (done.returncode, done.stderr) == (141, "")  # as a command that SIGPIPE ended, and nothing said


async def test_an_export_that_cannot_write_gives_its_snapshot_back_before_it_stops(tmp_path: Path) -> None:
    """`chatdock export | head`: the write that finds the reader gone ended the export while its snapshot was
    still open, closed later by the event loop, sometimes after the loop itself (a thread's traceback on stderr
    as the command exited: a CI run under load). It is closed before the export stops, whatever stopped it."""
    from chatdock.server.history.transfer import export

    async with open_store(str(tmp_path / "chatdock.db")) as store:
        await store.append_message("acme", NewMessage(contact_id="ann", channel="sms", role="user", content="hello"))
        taken = store.snapshot
        open_now: list[int] = []

        @contextlib.asynccontextmanager
        async def counted() -> AsyncIterator[HistorySnapshot]:
            async with taken() as history:
                open_now.append(1)
                try:
                    yield history
                finally:
                    open_now.pop()

        store.snapshot = counted  # type: ignore[method-assign]

        class Gone(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        with pytest.raises(BrokenPipeError) as stopped:
            await export(store, Gone(), None, None, True, [])
        assert open_now == [] and stopped.value is not None  # the exception (and its frames) still held here


def test_a_file_from_an_editor_or_a_pipe_is_read_as_any_other(tmp_path: Path) -> None:
    """A byte order mark before the first line (some editors write one), and a pipe given as a path
    (`chatdock import <(zcat history.jsonl.gz)`), which has no size and cannot be read twice."""
    db = tmp_path / "chatdock.db"
    marked = import_(db, "-", "-q", stdin="\ufeff" + good(1) + "\n" + good(2) + "\n")
    assert marked.returncode == 0 and "stored 2 message(s)" in marked.stdout, marked.stderr
    command = " ".join(shlex.quote(part) for part in [*chatdock_command(), "import", "--db", str(db), "-q"])
    piped = subprocess.run(
        ["bash", "-c", f"{command} <(printf '%s\\n' {shlex.quote(good(3))})"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert piped.returncode == 0 and "stored 1 message(s)" in piped.stdout, piped.stderr
    assert counts(db)[0] == 3
    folder = import_(db, str(tmp_path), "-q")
    assert folder.returncode == 2 and "is a folder; name a JSON Lines file" in folder.stderr
