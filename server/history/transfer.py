"""`chatdock export` and `chatdock import`: history in and out as JSON Lines (format: storage/history.py).

Export streams a batch at a time into `FILE.part` and renames it when done, so
a cut-off export never leaves a file that looks whole. Import reads the file
twice: the first pass checks every line (shape, bounds, ids taken by another
organization, chats that a message names) and writes nothing; the second
imports in batches. By default one bad line means nothing is imported;
`--skip-invalid` imports the rest and lists what it skipped.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from chatdock.server.history.progress import Progress
from chatdock.storage import ChatdockError, InvalidInput, Store
from chatdock.storage import validation as check
from chatdock.storage.history import Record, check_record, conflicts, dump_line, parse_line
from chatdock.storage.models import NewAlias, NewChat

BATCH = 500
SHOWN_PROBLEMS = 20


async def _total(store: Store, org: str | None, contact_id: str | None) -> int | None:
    try:
        return await store.count_records(org, contact_id)
    except ChatdockError:  # a damaged file may not count; the export still saves what it can read
        return None


async def export_lines(
    store: Store, org: str | None, contact_id: str | None, skipped: list[str] | None = None
) -> AsyncIterator[str]:
    """The lines of an export (each without its newline): the chats, then the aliases, then the messages.
    `chatdock export` writes them to a file; `GET /contacts/{contact_id}/export` streams them."""
    async for chat_org, chat in store.export_chats(org, contact_id, skipped=skipped):
        yield dump_line(chat_org, chat)
    async for alias_org, alias in store.export_aliases(org, contact_id):
        yield dump_line(alias_org, alias)
    async for message_org, message in store.export_messages(org, contact_id, skipped=skipped):
        yield dump_line(message_org, message)


async def export(
    store: Store, out: TextIO, org: str | None, contact_id: str | None, quiet: bool, skipped: list[str]
) -> int:
    """Write the chats, the aliases, then the messages; return how many lines were written. What a damaged database
    cannot read is passed over and named in `skipped`."""
    bar = None if quiet else Progress("exporting (lines)", await _total(store, org, contact_id))
    written = 0
    async for line in export_lines(store, org, contact_id, skipped):
        out.write(line + "\n")
        written += 1
        if bar is not None:
            bar.update(written)
    if bar is not None:
        bar.finish(written)
    return written


async def export_to_path(
    store: Store, path: str | None, org: str | None, contact_id: str | None, quiet: bool, skipped: list[str]
) -> int:
    """`export` into the file at `path` (written whole or not at all: a `.part` file renamed at the end), or to
    standard output; a file or an output that cannot be written is one InvalidInput that says why (a reader of
    standard output that goes away, `| head`, is its BrokenPipeError)."""
    if path is None or path == "-":
        try:
            written = await export(store, sys.stdout, org, contact_id, quiet, skipped)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise InvalidInput(f"cannot write the export to standard output: {exc.strerror or exc}") from None
        return written
    target = Path(path)
    if target.is_dir():
        raise InvalidInput(f"cannot write the export to {path}: it is a folder; name a file with -o")
    if not target.parent.is_dir():
        raise InvalidInput(f"cannot write the export to {path}: there is no folder {target.parent}")
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            written = await export(store, out, org, contact_id, quiet, skipped)
        os.replace(partial, target)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a folder without write permission, ...
            raise InvalidInput(f"cannot write the export to {path}: {exc.strerror or exc}") from None
        raise
    return written


@dataclass
class ImportReport:
    chats: int = 0
    aliases: int = 0
    messages: int = 0
    existing: int = 0
    lines: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.chats + self.aliases + self.messages

    def summary(self) -> str:
        stored = f"{self.messages:,} message(s)"
        if self.aliases:
            stored += f", {self.chats:,} chat(s) and {self.aliases:,} alias(es)"
        else:
            stored += f" and {self.chats:,} chat(s)"
        return (
            f"read {self.lines:,} line(s): stored {stored}, {self.existing:,} already there, "
            f"{len(self.problems):,} skipped"
        )


@contextmanager
def _readable(path: str) -> Iterator[Path]:
    """The file to read twice; standard input ('-') and a pipe (`<(...)`, /dev/stdin) are read once, into a
    temporary file."""
    if path != "-":
        source = Path(path)
        if source.is_file():
            yield source
            return
        if source.is_dir():
            raise InvalidInput(f"{path} is a folder; name a JSON Lines file, or '-' for standard input")
        if not source.exists():
            raise InvalidInput(f"no such file: {path}")
    with tempfile.TemporaryDirectory(prefix="chatdock-import-") as folder:
        spooled = Path(folder) / "stdin.jsonl"
        with spooled.open("wb") as out:
            if path == "-":
                shutil.copyfileobj(sys.stdin.buffer, out)
            else:
                with Path(path).open("rb") as stream:
                    shutil.copyfileobj(stream, out)
        yield spooled


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, bytes read so far, the line) for each line that is not blank."""
    read = 0
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            read += len(raw)
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte order mark, as some editors start UTF-8 with
            if raw.strip():
                yield number, read, raw


def _parse(raw: bytes, default_org: str, org_override: str | None) -> tuple[str, Record]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text: {exc.reason} at byte {exc.start + 1}") from None
    org, record = parse_line(text, default_org)
    # --org says where the line goes, not what its id is derived from: ids stay as earlier versions derived
    # them, so a file imported with --org before is found again
    return org_override or org, record


async def _check(
    store: Store, path: Path, default_org: str, org_override: str | None, quiet: bool
) -> tuple[int, list[tuple[int, str]]]:
    """First pass: every problem, by line number, without writing anything."""
    size = path.stat().st_size
    bar = None if quiet else Progress("checking (bytes)", size)
    problems: list[tuple[int, str]] = []
    chats_in_file: dict[str, tuple[str, str]] = {}
    aliases_in_file: dict[tuple[str, str], str] = {}
    pending: dict[str, list[tuple[int, Record]]] = {}
    lines = 0

    async def settle(org: str) -> None:
        batch = pending.pop(org, [])
        found = await conflicts(store, org, [record for _, record in batch], chats_in_file, aliases_in_file)
        problems.extend((batch[index][0], problem) for index, problem in found.items())

    for number, read, raw in _lines(path):
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
            pending.setdefault(org, []).append((number, record))
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


async def import_file(
    store: Store, path: str, default_org: str, org_override: str | None, skip_invalid: bool, quiet: bool
) -> ImportReport:
    """Import a JSON Lines file; on bad lines without `skip_invalid`, raise InvalidInput listing them."""
    with _readable(path) as source:
        report = ImportReport()
        report.lines, report.problems = await _check(store, source, default_org, org_override, quiet)
        if report.problems and not skip_invalid:
            raise InvalidInput(
                f"{len(report.problems):,} bad line(s), so nothing was imported; fix them, or pass --skip-invalid "
                "to import the others:\n" + _listing(report.problems)
            )
        bad = {number for number, _ in report.problems}
        size = source.stat().st_size
        bar = None if quiet else Progress("importing (bytes)", size)
        batch: list[tuple[int, Record]] = []
        batch_org = ""

        async def flush() -> None:
            if not batch:
                return
            outcomes = await store.import_history(batch_org, [record for _, record in batch], keep_going=skip_invalid)
            failed = [(batch[i][0], str(o)) for i, o in enumerate(outcomes) if isinstance(o, ChatdockError)]
            if failed and not skip_invalid:
                # the database changed between the passes (another writer); this batch was undone
                number, problem = failed[0]
                raise InvalidInput(
                    f"line {number}: {problem}\nthe batches before this line were imported ({report.stored:,} new); "
                    "fix the line and import the file again: nothing already imported is stored twice"
                )
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
            batch.clear()

        for number, read, raw in _lines(source):
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
