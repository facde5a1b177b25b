"""`chatdock export` and `chatdock import`: history in and out as JSON Lines (format: storage/history.py).

Export streams a batch at a time into `FILE.part` and renames it when done, so
a cut-off export never leaves a file that looks whole (beside a symbolic
link's target, so the link stays); a pipe or a device (a FIFO, /dev/stdout, a
shell's `>(...)`) is written into as it is, and the database's own files are
refused. Import reads the file twice: the first pass checks every line (shape,
bounds, ids taken by another organization, chats that a message names) and
writes nothing; the second imports in batches. By default one bad line means
nothing is imported; `--skip-invalid` imports the rest and lists what it
skipped. An import that stops part-way (a full disk, Ctrl-C) says how much it
had imported: importing the file again is safe, nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from chatdock.server.history.progress import Progress
from chatdock.storage import ChatdockError, InvalidInput, Store, is_postgres
from chatdock.storage import validation as check
from chatdock.storage.errors import OutcomeUnknown, message_id_taken
from chatdock.storage.history import Record, check_record, conflicts, dump_line, parse_line
from chatdock.storage.models import NewAlias, NewChat, NewMessage

BATCH = 500
SHOWN_PROBLEMS = 20
AGAIN = "importing the file again is safe: nothing already imported is stored twice"

T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped an import or an export; its words say what was done (the command tells them, and exits
    130)."""


def _progress(label: str, total: int | None, quiet: bool) -> AbstractContextManager[Progress | None]:
    """A progress bar on stderr (None when `quiet`), whose line ends if the work stops on an error."""
    return nullcontext() if quiet else Progress(label, total)


async def total_lines(store: Store, org: str | None, contact_id: str | None) -> int | None:
    """How many lines an export would write now (for a progress bar); None when a damaged file cannot count
    them (the export still saves what it can read)."""
    try:
        async with store.snapshot() as history:
            return await history.count_records(org, contact_id)
    except ChatdockError:
        return None


async def export_lines(
    store: Store, org: str | None, contact_id: str | None, skipped: list[str] | None = None
) -> AsyncGenerator[str, None]:
    """The lines of an export (each without its newline): the chats, then the aliases, then the messages, all
    of one snapshot taken as the first is read, so that writes made meanwhile are in all three or in none (a
    message is never written without its chat on an earlier line). `chatdock export` writes them to a file;
    `GET /contacts/{contact_id}/export` streams them."""
    async with store.snapshot() as history:
        async for chat_org, chat in history.export_chats(org, contact_id, skipped=skipped):
            yield dump_line(chat_org, chat)
        async for alias_org, alias in history.export_aliases(org, contact_id):
            yield dump_line(alias_org, alias)
        async for message_org, message in history.export_messages(org, contact_id, skipped=skipped):
            yield dump_line(message_org, message)


async def export(
    store: Store, out: TextIO, org: str | None, contact_id: str | None, quiet: bool, skipped: list[str]
) -> int:
    """Write the chats, the aliases, then the messages; return how many lines were written. What a damaged database
    cannot read is passed over and named in `skipped`."""
    total = None if quiet else await total_lines(store, org, contact_id)
    with _progress("exporting (lines)", total, quiet) as bar:
        written = 0
        # closed here, however the writing ends (a reader gone, a full disk): left to the loop, its snapshot's
        # connection would be closed after the loop was (a thread's traceback on stderr as the command exits)
        async with contextlib.aclosing(export_lines(store, org, contact_id, skipped)) as lines:
            async for line in lines:
                out.write(line + "\n")
                written += 1
                if bar is not None:
                    bar.update(written)
        if bar is not None:
            bar.finish(written)
    return written


def _written_through(path: str) -> bool:
    """Whether `-o path` is written into as it is rather than replaced: a pipe or a device (a FIFO, a terminal,
    /dev/stdout, a shell's `>(gzip > x.gz)`, which is /dev/fd/63), or a descriptor this process was given."""
    if path in ("/dev/stdout", "/dev/stderr") or path.startswith(("/dev/fd/", "/proc/self/fd/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there yet (or nothing this user may see): a new file
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _is_database(target: Path, database: str | None) -> bool:
    """Whether `target` (a symbolic link, or /dev/fd/N, followed) is the database file `database` names, or its
    -wal, -shm or -journal file, by any name (a link, a hard link): replacing it would destroy the history.
    None, a PostgreSQL URL or `:memory:`: no file to destroy."""
    if database is None or database == ":memory:" or is_postgres(database):
        return False
    named = os.path.realpath(database)
    if os.path.realpath(target) in [named + suffix for suffix in ("", "-wal", "-shm", "-journal")]:
        return True  # by its name, there or not yet (a -wal SQLite has not made yet)
    try:
        found = target.stat()
    except OSError:  # nothing there yet: a new file
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            own = os.stat(database + suffix)
        except OSError:
            continue
        if (own.st_dev, own.st_ino) == (found.st_dev, found.st_ino):
            return True
    return False


async def export_to_path(
    store: Store,
    path: str | None,
    org: str | None,
    contact_id: str | None,
    quiet: bool,
    skipped: list[str],
    database: str | None = None,
) -> int:
    """`export` into the file at `path` (written whole or not at all: a `.part` file beside it, or beside the
    target of a symbolic link at `path`, renamed onto it at the end), into a pipe or a device at `path` as it is
    (streaming), or to standard output; a file or an output that cannot be written, and the database's own files,
    are one InvalidInput that says why (a reader that goes away, `| head`, is its BrokenPipeError). `database`:
    the store's --db, whose files `path` must not name."""
    if path is None or path == "-":
        try:
            written = await export(store, sys.stdout, org, contact_id, quiet, skipped)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise InvalidInput(f"cannot write the export to standard output: {exc.strerror or exc}") from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise Interrupted("interrupted: the export on standard output is cut short; export again") from None
        return written
    planted = _planted(path)
    if planted is not None:
        named = "it is" if planted == os.path.abspath(path) else f"{planted} on its way is"
        raise InvalidInput(
            f"cannot write the export to {path}: {named} a symbolic link another user made in a folder anyone may "
            "write to, which could point the export at any file of yours; name a file of your own with -o"
        )
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # a link stays a link
    if _is_database(target, database):
        raise InvalidInput(
            f"cannot write the export to {path}: it is the database being exported (or one of its -wal, -shm "
            "files), which the export would destroy; name another file with -o"
        )
    if _written_through(path):
        try:
            # appending: a descriptor's file (`-o /dev/stdout >> log`) keeps what its opener chose to keep
            with open(path, "a", encoding="utf-8", newline="\n") as out:
                return await export(store, out, org, contact_id, quiet, skipped)
        except BrokenPipeError:  # the reader went away
            raise
        except OSError as exc:
            raise InvalidInput(f"cannot write the export to {path}: {exc.strerror or exc}") from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise Interrupted(f"interrupted: the export into {path} is cut short; export again") from None
    if target.is_dir():
        raise InvalidInput(f"cannot write the export to {path}: it is a folder; name a file with -o")
    if not target.parent.is_dir():
        raise InvalidInput(f"cannot write the export to {path}: there is no folder {target.parent}")
    partial: str | None = None
    try:
        # a new file of its own beside the target (never one found there: a link planted at a known name would
        # have the export written where it points), readable by its owner only, as the database is
        made, partial = tempfile.mkstemp(prefix=".chatdock-export-", suffix=".part", dir=target.parent)
        with os.fdopen(made, "w", encoding="utf-8", newline="\n") as out:
            written = await export(store, out, org, contact_id, quiet, skipped)
        os.replace(partial, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # nothing to remove where nothing could be made (a read-only disk)
            if partial is not None:
                os.unlink(partial)
        if isinstance(exc, OSError):  # a full disk, a read-only disk, a folder without write permission, ...
            raise InvalidInput(f"cannot write the export to {path}: {exc.strerror or exc}") from None
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):  # Ctrl-C: said, as an import's is
            raise Interrupted(f"interrupted: nothing was written to {path} (it is as it was); export again") from None
        raise
    return written


def _planted(path: str) -> str | None:
    """The first symbolic link on the way to `path` (a folder of it, or itself) that the export may not follow
    (`_followable`), or None (a review of the first version found a linked folder on the way followed)."""
    if not hasattr(os, "geteuid"):  # Windows: no such folders
        return None
    at = Path(os.path.abspath(path))
    current = Path(at.anchor)
    for part in at.parts[1:]:
        step = current / part
        if step.is_symlink():
            if not _followable(str(step)):
                return str(step)
            step = Path(os.path.realpath(step))
        current = step
    return None


def _followable(link: str) -> bool:
    """Whether the export may write where `link` points: Linux's rule for following a link (fs.protected_symlinks),
    kept wherever the kernel does not: in a sticky folder anyone may write to (/tmp), only a link of the user's
    own or of the folder's owner (found by a security review: another user's link at the name a shared export
    goes to had the export replace the file it named)."""
    folder = os.stat(os.path.dirname(os.path.abspath(link)))
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    owner = os.lstat(link).st_uid
    return not shared or owner in (os.geteuid(), folder.st_uid)


@dataclass
class ImportReport:
    chats: int = 0
    aliases: int = 0
    messages: int = 0
    existing: int = 0
    lines: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    through: int = 0  # the last line of the last batch imported
    into: dict[str, int] = field(default_factory=dict)  # what was stored in each organization

    @property
    def stored(self) -> int:
        return self.chats + self.aliases + self.messages

    def summary(self) -> str:
        stored = f"{self.messages:,} message(s)"
        if self.aliases:
            stored += f", {self.chats:,} chat(s) and {self.aliases:,} alias(es)"
        else:
            stored += f" and {self.chats:,} chat(s)"
        # the organizations named: a file's lines may name any of the database's (found by a security review)
        where = ", ".join(
            f"{json.dumps(org, ensure_ascii=False)} {count:,}" for org, count in sorted(self.into.items())
        )
        return (
            f"read {self.lines:,} line(s): stored {stored}, {self.existing:,} already there, "
            f"{len(self.problems):,} skipped" + (f"; stored in {where}" if where else "")
        )


def _unreadable(name: str, exc: OSError) -> InvalidInput:
    return InvalidInput(f"cannot read {name}: {exc.strerror or exc}")


def _named(path: str) -> str:
    return "standard input" if path == "-" else path


def refuse_unreadable(path: str) -> None:
    """An InvalidInput for a file to import that is not there or cannot be read, before the database is opened
    (or made: a mistyped file name left an empty database at a new --db path)."""
    if path != "-":
        _regular_file(path)


def _regular_file(path: str) -> Path | None:
    """The file at `path` when it can be read twice (a regular file, found readable), None for a pipe."""
    source = Path(path)
    try:
        if source.is_file():
            with source.open("rb"):  # one that cannot be opened (no permission) is refused before any work
                return source
        if source.is_dir():
            raise InvalidInput(f"{path} is a folder; name a JSON Lines file, or '-' for standard input")
        if not source.exists():
            raise InvalidInput(f"no such file: {path}")
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return None


@contextmanager
def _readable(path: str) -> Iterator[Path]:
    """The file to read twice; standard input ('-') and a pipe (`<(...)`, /dev/stdin) are read once, into a
    temporary file. A file that cannot be read is an InvalidInput that says why."""
    source = None if path == "-" else _regular_file(path)
    if source is not None:
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="chatdock-import-") as folder:
        spooled = Path(folder) / "stdin.jsonl"
        try:
            with spooled.open("wb") as out:
                if path == "-":
                    shutil.copyfileobj(sys.stdin.buffer, out)
                else:
                    with Path(path).open("rb") as stream:
                        shutil.copyfileobj(stream, out)
        except OSError as exc:  # the pipe, or the temporary folder (full)
            raise InvalidInput(f"cannot read {_named(path)} into a temporary file: {exc.strerror or exc}") from None
        yield spooled


def _lines(path: Path, name: str) -> Iterator[tuple[int, int, bytes]]:
    """(line number, bytes read so far, the line) for each line that is not blank; a failed read is an
    InvalidInput that names the file by `name`."""
    read = 0
    try:
        with path.open("rb") as source:
            for number, raw in enumerate(source, start=1):
                read += len(raw)
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte order mark, as some editors start UTF-8 with
                if raw.strip():
                    yield number, read, raw
    except OSError as exc:
        raise _unreadable(name, exc) from None


def _parse(raw: bytes, default_org: str, org_override: str | None) -> tuple[str, Record]:
    try:
        # without its line ending: a line cut inside a string is an unterminated string, not a control character
        text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text: {exc.reason} at byte {exc.start + 1}") from None
    org, record = parse_line(text, default_org)
    # --org says where the line goes, not what its id is derived from: ids stay as earlier versions derived
    # them, so a file imported with --org before is found again
    return org_override or org, record


def _without_id(raw: bytes) -> bool:
    """Whether a line (one that parsed) gave its message no id, so that the id is derived from the line."""
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(fields, dict) and fields.get("id") is None


def _explained(problem: str, record: Record, raw: bytes, org: str, org_override: str | None) -> str:
    """`problem` as the import tells it: a message id taken by another organization, when the line has no id
    (the id is the line's own, derived from it), says what to do instead of "leave id out"."""
    if not isinstance(record, NewMessage) or record.id is None or problem != str(message_id_taken(record.id)):
        return problem
    if not _without_id(raw):
        return problem
    said = (
        f"message id {record.id}, derived from this line (it has no id), is already used in another "
        "organization: the same line was imported there before"
    )
    if org_override is not None:
        return (
            f"{said}; a line without an id gets it from its content and the organization the line names, which "
            f"--org does not change, so to import it into {org!r} too, give the lines an org "
            f'("org": {json.dumps(org, ensure_ascii=False)}) or set CHATDOCK_ORG={org} instead of passing --org'
        )
    return (
        f"{said} (with --org, which keeps the id the line's own organization gives it); to import it into "
        f'{org!r} too, give the line an "id" of its own (a UUID)'
    )


async def _check(
    store: Store, path: Path, name: str, default_org: str, org_override: str | None, quiet: bool
) -> tuple[int, list[tuple[int, str]]]:
    """First pass: every problem, by line number, without writing anything."""
    size = path.stat().st_size
    problems: list[tuple[int, str]] = []
    chats_in_file: dict[str, tuple[str, str]] = {}
    aliases_in_file: dict[tuple[str, str], str] = {}
    pending: dict[str, list[tuple[int, Record, bytes]]] = {}  # the line's bytes, to explain a problem found
    lines = 0

    async def settle(org: str) -> None:
        batch = pending.pop(org, [])
        found = await conflicts(store, org, [record for _, record, _ in batch], chats_in_file, aliases_in_file)
        for index, problem in found.items():
            number, record, raw = batch[index]
            problems.append((number, _explained(problem, record, raw, org, org_override)))

    with _progress("checking (bytes)", size, quiet) as bar:
        for number, read, raw in _lines(path, name):
            lines += 1
            try:
                org, record = _parse(raw, default_org, org_override)
                check_record(record)
            except ChatdockError as exc:
                problems.append((number, str(exc)))
            else:
                if isinstance(record, NewChat):
                    # the lines after it may name this chat (should the chat itself be refused, so are they)
                    chats_in_file.setdefault(check.uuid_text(record.id, "id"), (org, record.contact_id))
                pending.setdefault(org, []).append((number, record, raw))
                if len(pending[org]) >= BATCH:
                    await settle(org)
            if bar is not None:
                bar.update(read)
        for org in list(pending):
            await settle(org)
        if bar is not None:
            bar.finish(size)
    problems.sort()
    return lines, problems


async def _whole(write: Awaitable[T]) -> tuple[T, bool]:
    """`write`'s result, and whether the import was interrupted (Ctrl-C) meanwhile: an interrupted batch is
    let finish, so that what was imported is known; the caller raises the interruption once it has counted."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task), False
    except asyncio.CancelledError:
        await asyncio.wait([task])
        return task.result(), True


def _so_far(report: ImportReport, unsure: bool) -> str:
    """What an import that stopped part-way had imported: the lines through `report.through`; `unsure`: the
    batch after them was being written when it stopped, and may or may not be stored."""
    if not report.through:
        return "the first batch may or may not be stored, nothing else was" if unsure else "nothing was imported"
    done = f"lines 1 to {report.through:,} were imported ({report.stored:,} new)"
    return f"{done}; the batch after them may or may not be stored" if unsure else f"{done}, none after"


async def _import_lines(
    store: Store,
    source: Path,
    name: str,
    default_org: str,
    org_override: str | None,
    report: ImportReport,
    skip_invalid: bool,
    quiet: bool,
) -> None:
    """Second pass: import the lines the first found good, in batches of one organization each, counting in
    `report`. A failure stops it with the batch that failed undone (ChatdockError), an interruption after the
    batch being written is done: either way `report` counts what was imported, and every line after it is not."""
    size = source.stat().st_size
    bad = {number for number, _ in report.problems}
    batch: list[tuple[int, Record]] = []
    batch_org = ""

    async def flush() -> None:
        if not batch:
            return
        records = [record for _, record in batch]
        outcomes, interrupted = await _whole(store.import_history(batch_org, records, keep_going=skip_invalid))
        failed = [(batch[i][0], str(o)) for i, o in enumerate(outcomes) if isinstance(o, ChatdockError)]
        if failed and not skip_invalid:  # the database changed between the passes (another writer): undone
            number, problem = failed[0]
            raise InvalidInput(f"line {number}: {problem}")
        report.problems.extend(failed)
        for (_, record), outcome in zip(batch, outcomes, strict=True):
            if outcome == "existing":
                report.existing += 1
            elif outcome == "stored" and isinstance(record, NewChat):
                report.chats += 1
            elif outcome == "stored" and isinstance(record, NewAlias):
                report.aliases += 1
            elif outcome == "stored":
                report.messages += 1
            if outcome == "stored":
                report.into[batch_org] = report.into.get(batch_org, 0) + 1
        report.through = batch[-1][0]
        batch.clear()
        if interrupted:
            raise asyncio.CancelledError

    with _progress("importing (bytes)", size, quiet) as bar:
        for number, read, raw in _lines(source, name):
            if number in bad:
                continue
            org, record = _parse(raw, default_org, org_override)
            if batch and (org != batch_org or len(batch) >= BATCH):
                await flush()
            batch_org = org
            batch.append((number, record))
            if bar is not None:
                bar.update(read)
        await flush()
        if bar is not None:
            bar.finish(size)


async def import_file(
    store: Store,
    path: str,
    default_org: str,
    org_override: str | None,
    skip_invalid: bool,
    quiet: bool,
    target: AbstractAsyncContextManager[Store] | None = None,
) -> ImportReport:
    """Import a JSON Lines file; on bad lines without `skip_invalid`, raise InvalidInput listing them. An import
    stopped part-way, by a failure or Ctrl-C, says how much it had imported and that importing again is safe.
    The lines are checked against `store`, and written into it, or, given `target`, into the store it opens once
    they pass (a new database is made only for an import that goes ahead: checked against an empty store)."""
    report = ImportReport()
    name = _named(path)
    with _readable(path) as source:
        try:
            report.lines, report.problems = await _check(store, source, name, default_org, org_override, quiet)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise Interrupted("interrupted while checking the file: nothing was imported") from None
        if report.problems and not skip_invalid:
            raise InvalidInput(
                f"{len(report.problems):,} bad line(s), so nothing was imported; fix them, or pass --skip-invalid "
                "to import the others:\n" + _listing(report.problems)
            )
        async with nullcontext(store) if target is None else target as written:
            try:
                await _import_lines(written, source, name, default_org, org_override, report, skip_invalid, quiet)
            except ChatdockError as exc:  # a full disk; the file, changed or unreadable since the first pass
                so_far = _so_far(report, unsure=isinstance(exc, OutcomeUnknown))
                raise type(exc)(f"{exc}; the import stopped: {so_far}; once that is fixed, {AGAIN}") from None
            except (asyncio.CancelledError, KeyboardInterrupt) as exc:
                # Ctrl-C: the batch being written was let finish; a second Ctrl-C did not wait for it
                so_far = _so_far(report, unsure=isinstance(exc, KeyboardInterrupt))
                raise Interrupted(f"interrupted: {so_far}; {AGAIN}") from None
    report.problems.sort()
    return report


def _listing(problems: list[tuple[int, str]]) -> str:
    shown = [f"line {number}: {problem}" for number, problem in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        shown.append(f"... and {len(problems) - SHOWN_PROBLEMS:,} more bad line(s)")
    return "\n".join(shown)


def skipped(problems: list[tuple[int, str]]) -> str:
    """Every skipped line with what was wrong with it."""
    return "".join(f"skipped line {number}: {problem}\n" for number, problem in problems)
