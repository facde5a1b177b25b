"""`chatdock import` and `chatdock export` when something goes wrong: hostile lines, a file that cannot be read, a
disk that fills or a Ctrl-C part-way, and `-o` naming something other than a plain new file. Run as the real
command on real files, as tests/cli/test_history.py does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx2
import pytest

from chatdock.storage import open_store
from tests.cli.test_history import counts, export, good, import_
from tests.test_reliability_hardening import tmpfs
from tests.transports import chatdock_command, create_key, http_server, installed_command, run_cli

pytestmark = pytest.mark.process  # each test here starts real processes

AGAIN = "importing the file again is safe: nothing already imported is stored twice"


def many(path: Path, lines: int, padding: int = 0) -> None:
    """A file of `lines` good hand-written messages, over fifty contacts."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            line = good(0, contact_id=f"+316{i % 50:08d}", content=f"line {i} " + "x" * padding)
            out.write(line + "\n")


def only_line(stderr: str) -> str:
    """The one line chatdock says why it stopped with (the store may log its own failure before it)."""
    said = [line for line in stderr.splitlines() if line.startswith("chatdock: ")]
    assert len(said) == 1 and "Traceback" not in stderr, stderr
    return said[0]


# --- import: hostile lines and files ---


def test_hostile_lines_are_bad_lines_named_by_number(tmp_path: Path) -> None:
    db, path = tmp_path / "chatdock.db", tmp_path / "hostile.jsonl"
    lines = [
        good(1),
        "[" * 100_000 + "]" * 100_000,  # more nesting than any reader recurses into
        good(2, metadata={"a": [[[1]]]}).replace("[[[1]]]", "[" * 990 + "]" * 990),  # about as deep as that
        good(3).replace('"line 3"', '"line 3", "metadata": {"n": ' + "9" * 5000 + "}"),  # beyond int conversion
        good(4, contact_id=int("7" * 4000)),  # a long number that Python still reads
        good(5),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = import_(db, str(path), "-q")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("chatdock: 4 bad line(s), so nothing was imported"), done.stderr
    said = {int(line.split(":")[0].removeprefix("line ")): line for line in done.stderr.splitlines()[1:]}
    assert "nested too deeply to read" in said[2] and "nest" in said[3], said
    assert "a number has more than 4,300 digits" in said[4], said
    assert "contact_id" in said[5], said
    assert sorted(said) == [2, 3, 4, 5]
    assert list(tmp_path.iterdir()) == [path]  # the database it would have made is not left behind, empty

    skipping = import_(db, str(path), "-q", "--skip-invalid")
    assert skipping.returncode == 0, skipping.stderr
    assert "stored 2 message(s) and 0 chat(s), 0 already there, 4 skipped" in skipping.stdout
    assert counts(db)[0] == 2


def test_a_time_not_written_out_is_a_bad_line_as_over_the_tools(tmp_path: Path) -> None:
    """A history line's created_at is checked as the tools and routes check it: a basic-format date (stored as
    1970-08-23 and reported imported), seconds or milliseconds since 1970 and a date alone are bad lines, named by
    number and field, for a chat's and an alias's times too."""
    db, path = tmp_path / "chatdock.db", tmp_path / "times.jsonl"
    chat = {"kind": "chat", "id": "0193c4f0-0000-7000-8000-000000000001", "contact_id": "+31600000001"}
    lines = [
        good(1),
        good(2, created_at="20240101"),
        good(3, created_at=1704067200),
        good(4, created_at=1704067200.5),
        good(5, created_at="1704067200000"),
        good(6, created_at="2024-01-01"),
        json.dumps({**chat, "channels": [{"name": "sms"}], "created_at": 1704067200}),
        json.dumps(
            {"kind": "alias", "contact_id": "+31600000001", "identifier": "ann@example.com", "created_at": "20240101"}
        ),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = import_(db, str(path), "-q")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("chatdock: 7 bad line(s), so nothing was imported"), done.stderr
    said = {int(line.split(":")[0].removeprefix("line ")): line for line in done.stderr.splitlines()[1:]}
    assert sorted(said) == [2, 3, 4, 5, 6, 7, 8], said
    for number in (3, 4, 7):
        assert "created_at: input should be a time written out, like '2026-11-21T09:30:00Z'" in said[number], said
        assert "not a number" in said[number], said
    for number in (2, 5, 6, 8):
        assert "created_at: input should be a date and a time with its timezone" in said[number], said
    assert list(tmp_path.iterdir()) == [path]


async def test_another_message_under_a_stored_provider_id_is_a_conflict_not_already_there(
    tmp_path: Path, db: str
) -> None:
    """Two contacts' SMS numbered alike by an old gateway (a counter per device): the second was counted
    `already there` and dropped, its contact never made. It stops the import, named, as a line to fix; with
    --skip-invalid it is skipped and listed, as is another contact's message of the same text ("ok") under an id
    taken. A copy of the same message (same contact, same text) under the id is still one message."""
    path = tmp_path / "gateway.jsonl"
    sms = {"channel": "sms", "role": "user", "metadata": {"provider_message_id": "1001"}}
    lines = [
        good(1, contact_id="+31611111111", content="hi from Ann", **sms),
        good(2, contact_id="+31644444444", content="hi from Bob", **sms),
        good(3, contact_id="+31611111111", content="hi from Ann", **sms),  # the gateway sent it twice
        good(4, contact_id="+31655555555", content="ok", channel="whatsapp", metadata={"provider_message_id": "7"}),
        good(5, contact_id="+31666666666", content="ok", channel="whatsapp", metadata={"provider_message_id": "7"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = import_(db, str(path), "-q")
    assert done.returncode == 2, done.stderr
    said = only_line(done.stderr)
    assert said.startswith(
        "chatdock: line 2: metadata.provider_message_id '1001' on channel 'sms' is already another message's (id "
    ), said
    assert "of contact +31611111111)" in said and "the import stopped: nothing was imported" in said, said
    skipping = import_(db, str(path), "-q", "--skip-invalid")
    assert skipping.returncode == 0, skipping.stderr
    assert "stored 2 message(s) and 0 chat(s), 1 already there, 2 skipped" in skipping.stdout
    assert "skipped line 2: metadata.provider_message_id '1001'" in skipping.stderr, skipping.stderr
    assert "skipped line 5: metadata.provider_message_id '7' on channel 'whatsapp'" in skipping.stderr  # its "ok" too
    async with open_store(db) as store:
        assert [m.content for m in (await store.get_context("default", "+31611111111")).messages] == ["hi from Ann"]
        assert (await store.get_context("default", "+31644444444")).messages == []


def test_a_refused_import_makes_no_database_and_removes_none(tmp_path: Path) -> None:
    """A new database is made only for an import that goes ahead, so a refused one neither leaves an empty one
    behind (a path with ~ included, which chatdock expands) nor has one to remove: a database another command
    made at that path meanwhile is never taken away (a review's race: a key created while the import checked)."""
    home, bad = tmp_path / "home", tmp_path / "bad.jsonl"
    home.mkdir()
    bad.write_text(good(1) + "\n" + '{"not": "a line"}\n')
    command = [*installed_command(), "import", "-q", str(bad)]
    for where in (["--db", "~/new.db"], []):  # the flag, and CHATDOCK_DB, as a unit file or .env gives it
        env = {**os.environ, "HOME": str(home), "CHATDOCK_DB": "~/new.db"}
        done = subprocess.run([*command, *where], capture_output=True, text=True, timeout=60, env=env, check=False)
        assert done.returncode == 2 and "so nothing was imported" in done.stderr, done.stderr
        assert list(home.iterdir()) == []
    made = home / "made.db"  # made by another command before the import's check is over: kept, with its key
    assert run_cli("keys", "create", "--db", str(made), "--org", "acme", "--name", "k").returncode == 0
    assert import_(made, str(bad), "-q").returncode == 2
    assert "acme" in run_cli("keys", "list", "--db", str(made)).stdout


def test_a_file_that_cannot_be_read_is_one_line_and_nothing_imported(tmp_path: Path) -> None:
    db = tmp_path / "chatdock.db"
    refused = [Path("/proc/self/mem")]  # opens, and refuses reading at its start: an I/O error
    if os.geteuid() != 0:  # root reads a file whatever its permissions say
        locked = tmp_path / "locked.jsonl"
        locked.write_text(good(1) + "\n")
        locked.chmod(0)
        refused.append(locked)
    for path in refused:
        done = import_(db, str(path), "-q")
        assert done.returncode == 2 and done.stdout == "", (path, done.stdout)
        assert done.stderr.startswith(f"chatdock: cannot read {path}: "), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not db.exists()  # nothing imported, nor an empty database left
    fresh = tmp_path / "fresh.db"  # a mistyped file: refused before a database is made at a new --db path
    done = import_(fresh, str(tmp_path / "typo.jsonl"), "-q")
    assert (done.returncode, done.stderr) == (2, f"chatdock: no such file: {tmp_path / 'typo.jsonl'}\n")
    assert not fresh.exists(), "an empty database was left behind (found by an operator's review)"


# --- import: stopped part-way ---


def test_an_import_the_disk_stops_says_what_it_imported_and_importing_again_completes_it(tmp_path: Path) -> None:
    """The disk fills part-way, simulated by a file size limit on the process (SQLite's writes past it fail as a
    full disk's would, with no mount and no root): the batches before are kept, and the line says so."""
    db, path = tmp_path / "chatdock.db", tmp_path / "history.jsonl"
    many(path, 20_000, padding=200)  # 6 MB of history: more than the 3 MB the database may grow to

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))

    stopped = subprocess.run(  # the installed command itself: a forked one would not keep the child's limit
        [*installed_command(), "import", "--db", str(db), "-q", str(path)],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=small_disk,
    )  # fmt: skip
    assert stopped.returncode == 2 and stopped.stdout == "", stopped.stderr
    imported = counts(db)[0]
    assert 0 < imported < 20_000
    said = only_line(stopped.stderr)
    assert said.startswith("chatdock: the disk ") and str(db) in said, said
    assert f"the import stopped: lines 1 to {imported:,} were imported ({imported:,} new), none after" in said
    assert said.endswith(f"once that is fixed, {AGAIN}"), said

    again = import_(db, str(path), "-q")
    assert again.returncode == 0, again.stderr
    assert f"stored {20_000 - imported:,} message(s) and 0 chat(s), {imported:,} already there" in again.stdout
    assert counts(db)[0] == 20_000


@pytest.mark.parametrize(
    ("log_format", "stop"), [("text", signal.SIGINT), ("json", signal.SIGINT), ("text", signal.SIGTERM)]
)
def test_an_import_stopped_with_ctrl_c_says_what_it_imported_and_importing_again_completes_it(
    tmp_path: Path, log_format: str, stop: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM (a service manager's stop, a job's timeout: it ended the import at once, in silence,
    exit 143), says what was imported; importing again completes it."""
    db, path, lines = tmp_path / "chatdock.db", tmp_path / "history.jsonl", 20_000
    many(path, lines)
    process = subprocess.Popen(
        [*chatdock_command(), "import", "--db", str(db), "-q", "--log-format", log_format, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (db.exists() and _stored(db)):  # the first pass has checked the file; batches are going in
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(stop)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    imported = counts(db)[0]
    assert process.returncode == 130 and out == "", (process.returncode, out, err)
    assert 0 < imported < lines
    said = f"interrupted: lines 1 to {imported:,} were imported ({imported:,} new), none after; {AGAIN}"
    if log_format == "json":  # one record, like every other line the command writes
        assert [(r["level"], r["message"]) for r in map(json.loads, err.splitlines())] == [("ERROR", said)], err
    else:
        assert err == f"chatdock: {said}\n"

    again = import_(db, str(path), "-q")
    assert again.returncode == 0, again.stderr
    assert f"stored {lines - imported:,} message(s) and 0 chat(s), {imported:,} already there" in again.stdout
    assert counts(db)[0] == lines


def _stored(db: Path) -> int:
    """How many messages the database holds now (0 while it is still being created)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.DatabaseError:  # no table yet
        return 0


# --- export -o: what is at the path ---


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, str]:
    """A database of 3,000 messages (more than a pipe holds at once) and its export."""
    db, path = tmp_path / "chatdock.db", tmp_path / "history.jsonl"
    many(path, 3000, padding=100)
    assert import_(db, str(path), "-q").returncode == 0
    return db, export(db)


def test_export_refuses_to_write_over_its_own_database(tmp_path: Path, history: tuple[Path, str]) -> None:
    db, exported = history
    (tmp_path / "link.db").symlink_to(db)
    os.link(db, tmp_path / "hard.db")
    for named in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), tmp_path / "link.db", tmp_path / "hard.db"):
        done = run_cli("export", "--db", str(db), "-q", "-o", str(named))
        assert (done.returncode, done.stdout) == (2, ""), (named, done.stderr)
        assert done.stderr == (
            f"chatdock: cannot write the export to {named}: it is the database being exported (or one of its -wal, "
            "-shm files), which the export would destroy; name another file with -o\n"
        )
    assert (tmp_path / "link.db").is_symlink()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert counts(db)[0] == 3000 and export(db) == exported


def test_export_onto_a_read_only_disk_is_one_line(tmp_path: Path, history: tuple[Path, str]) -> None:
    """A read-only mount: the export says so in one line (it printed a traceback: its clean-up could not
    remove the .part file it never made; found by an operator's review)."""
    db, _ = history
    with tmpfs(tmp_path / "ro", "1m", "ro") as disk:
        done = run_cli("export", "--db", str(db), "-q", "-o", str(disk / "x.jsonl"))
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == f"chatdock: cannot write the export to {disk / 'x.jsonl'}: Read-only file system\n"


def test_export_to_a_symbolic_link_writes_its_target_and_keeps_the_link(
    tmp_path: Path, history: tuple[Path, str]
) -> None:
    db, exported = history
    folder = tmp_path / "exports"
    folder.mkdir()
    target = folder / "latest.jsonl"
    target.write_text("an older export\n")
    link = tmp_path / "history-link.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "next.jsonl"
    dangling.symlink_to(folder / "next.jsonl")  # its target does not exist yet
    for path, written in ((link, target), (dangling, folder / "next.jsonl")):
        done = run_cli("export", "--db", str(db), "-q", "-o", str(path))
        assert done.returncode == 0, done.stderr
        assert path.is_symlink() and path.resolve() == written
        assert written.read_text(encoding="utf-8") == exported
    assert sorted(p.name for p in folder.iterdir()) == ["latest.jsonl", "next.jsonl"]  # no .part left
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".part") == []


def test_a_link_planted_where_an_export_writes_does_not_steer_it(tmp_path: Path, history: tuple[Path, str]) -> None:
    """Another user of a shared folder links the name the export wrote its partial file under to a file of
    theirs: the export overwrote that file with the organization's messages and left `-o` a link to it (a
    security review). The export's partial file is now its own, made new, and its result its owner's only."""
    db, exported = history
    victim = tmp_path / "victim.txt"
    victim.write_text("theirs\n")
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.part").symlink_to(victim)
    done = run_cli("export", "--db", str(db), "-q", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "theirs\n" and not out.is_symlink()
    assert out.read_text(encoding="utf-8") == exported and stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a link of another user's: needs root")
def test_an_export_does_not_follow_another_users_link_in_a_shared_folder(
    tmp_path: Path, history: tuple[Path, str]
) -> None:
    """In a sticky folder anyone may write to, another user links the name a shared export goes to at a file of
    the exporting user's: the export replaced that file with the organization's messages (a security review).
    Such a link is refused, as Linux refuses to follow it where fs.protected_symlinks is on; the user's own
    link there is still followed."""
    db, exported = history
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA mine\n")
    planted = shared / "export.jsonl"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)  # nobody's
    done = run_cli("export", "--db", str(db), "-q", "-o", str(planted))
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == (
        f"chatdock: cannot write the export to {planted}: it is a symbolic link another user made in a folder anyone "
        "may write to, which could point the export at any file of yours; name a file of your own with -o\n"
    )
    assert victim.read_text() == "ssh-ed25519 AAAA mine\n" and sorted(p.name for p in shared.iterdir()) == [
        "export.jsonl"
    ]
    # a folder on the way, linked by another user at a folder of the user's: not followed either
    home = tmp_path / "home"
    home.mkdir()
    folder = shared / "exports"
    folder.symlink_to(home)
    os.lchown(folder, 65534, 65534)
    through = run_cli("export", "--db", str(db), "-q", "-o", str(folder / "out.jsonl"))
    assert (through.returncode, list(home.iterdir())) == (2, []), through.stderr
    assert f"{folder} on its way is a symbolic link another user made" in through.stderr
    os.lchown(planted, os.geteuid(), os.getegid())  # the user's own link: followed, as before
    done = run_cli("export", "--db", str(db), "-q", "-o", str(planted))
    assert done.returncode == 0, done.stderr
    assert planted.is_symlink() and victim.read_text(encoding="utf-8") == exported


def test_export_to_a_fifo_streams_into_it_and_leaves_it_a_fifo(tmp_path: Path, history: tuple[Path, str]) -> None:
    db, exported = history
    fifo = tmp_path / "export.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as reader:  # waits for the export to open it
            received.append(reader.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    done = run_cli("export", "--db", str(db), "-q", "-o", str(fifo))
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert not reader.is_alive() and received == [exported.encode()]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert not list(tmp_path.glob("*.part"))


def test_an_export_stopped_with_ctrl_c_says_it_is_cut_short(tmp_path: Path, history: tuple[Path, str]) -> None:
    """Ctrl-C during an export exited 130 in silence: whoever reads the pipe could not tell a cut export from a
    whole one but by the exit status. It says so, as an import stopped with Ctrl-C does."""
    db, exported = history
    fifo = tmp_path / "export.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [*chatdock_command(), "export", "--db", str(db), "-q", "-o", str(fifo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with fifo.open("rb") as reader:
            received = reader.read(1000)  # the export is under way, blocked on the pipe
            process.send_signal(signal.SIGINT)
            received += reader.read()  # until it ends
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (process.returncode, out) == (130, "")
    assert err == f"chatdock: interrupted: the export into {fifo} is cut short; export again\n"
    assert 1000 <= len(received) < len(exported.encode())


@pytest.mark.parametrize("background", [False, True])
def test_an_export_stopped_with_sigterm_leaves_no_unfinished_file(tmp_path: Path, background: bool) -> None:
    """SIGTERM (a cron job's timeout, a service manager's stop) during an export into a file: it left its hidden
    `.part` file, the history in it (a contact forgotten later among it), and said nothing. It is removed, the
    file the export was asked for is not made, and the export says so; also started as a background job (a
    shell's `&` ignores SIGINT there, and Python's Ctrl-C with it)."""
    db, path = tmp_path / "chatdock.db", tmp_path / "history.jsonl"
    many(path, 4_000, padding=4_000)
    assert import_(db, str(path), "-q").returncode == 0
    target = tmp_path / "backup.jsonl"
    process = subprocess.Popen(
        # a fresh process for the background: the fork server's child would not take the ignored SIGINT
        [*(installed_command() if background else chatdock_command()), "export", "--db", str(db), "-q", "-o",
         str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(part.stat().st_size for part in tmp_path.glob(".chatdock-export-*.part")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (process.returncode, out) == (130, ""), err
    assert err == f"chatdock: interrupted: nothing was written to {target} (it is as it was); export again\n"
    assert sorted(found.name for found in tmp_path.iterdir()) == ["chatdock.db", "history.jsonl"]


def test_export_to_a_descriptor_path_writes_into_the_pipe_it_names(history: tuple[Path, str]) -> None:
    """`chatdock export -o >(gzip > x.gz)`: the shell passes a pipe, named /dev/fd/N."""
    db, exported = history
    read_end, write_end = os.pipe()
    received: list[bytes] = []

    def read() -> None:
        with os.fdopen(read_end, "rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = subprocess.Popen(
        [*chatdock_command(), "export", "--db", str(db), "-q", "-o", f"/dev/fd/{write_end}"],
        pass_fds=[write_end], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(write_end)  # the reader sees the end once chatdock closes its copy
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    reader.join(30)
    assert process.returncode == 0 and out == "", err
    assert not reader.is_alive() and received == [exported.encode()]


def test_export_to_a_descriptor_path_of_a_regular_file_appends_to_it(history: tuple[Path, str], tmp_path: Path) -> None:
    """`chatdock export -o /dev/fd/5 5>>log`: a file the shell opened is written into, not taken for the
    database (which is refused by its own name and inode, not by being an open file)."""
    db, exported = history
    log = tmp_path / "log.jsonl"
    log.write_text("kept\n")
    with log.open("a") as opened:
        done = subprocess.run(
            [*chatdock_command(), "export", "--db", str(db), "-q", "-o", f"/dev/fd/{opened.fileno()}"],
            pass_fds=[opened.fileno()], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text() == "kept\n" + exported


async def test_an_import_beside_a_serving_server_leaves_its_appends_a_turn(tmp_path: Path) -> None:
    """`chatdock import` into the file a server writes to: the import's transactions and its search index's
    catch-up followed one another so closely that the server, asking for the write lock again at most every
    100 ms (SQLite's own wait), kept every append waiting until the import ended (2.6 to 3.6 s for 30,000 lines;
    found by a review as a back-end developer). Each append answers within a bound far below that."""
    db, path = tmp_path / "chatdock.db", tmp_path / "history.jsonl"
    many(path, 30_000)
    key = create_key(str(db), "acme", "webhook")
    with http_server(str(db)) as base:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            importing = await asyncio.create_subprocess_exec(
                *chatdock_command(), "import", "--db", str(db), "-q", str(path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            took: list[float] = []
            while importing.returncode is None and len(took) < 2000:
                began = time.monotonic()
                answer = await http.post(
                    "/chats", json={"contact_id": "+31699999999", "channel": "sms", "role": "user", "content": "hi"}
                )
                took.append(time.monotonic() - began)
                assert answer.status_code == 201, answer.text
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(importing.wait()), 0.01)
            _, err = await importing.communicate()
    assert importing.returncode == 0, err
    assert len(took) > 20, took  # it appended while the import ran
    assert max(took) < 1.5, sorted(took)[-5:]  # a turn within a short wait (it was the whole import's end)
