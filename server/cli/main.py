"""The `chatdock` command: the only place that reads flags and environment variables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import re
import signal
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from chatdock.server.ops import logs
from chatdock.server.settings import Settings
from chatdock.storage import ChatdockError, InvalidInput, check_store, is_new_file, is_postgres, read_schema
from chatdock.storage import validation as check
from chatdock.storage.sql.migrations import newer_schema

logger = logging.getLogger("chatdock")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
DURABILITIES = ("normal", "full")


NO_HOME = "\0"  # the default database where there is no home folder to keep it in (argv cannot hold a NUL)


def default_db() -> str:
    """A file under the user's data directory (XDG_DATA_HOME, or ~/.local/share). A relative XDG_DATA_HOME is
    ignored, as the XDG spec says: it named a folder under whatever folder the client started chatdock in.
    NO_HOME when neither names a folder (a container's user with no HOME and no passwd entry: every command
    failed with a traceback, --db given or not, found by an SRE's review)."""
    given = os.environ.get("XDG_DATA_HOME", "")
    try:
        base = given if os.path.isabs(given) else str(Path.home() / ".local" / "share")
    except RuntimeError:
        return NO_HOME
    return str(Path(base) / "chatdock" / "chatdock.db")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, refusing a bad command line in one line that says what to do (argparse printed its
    usage, several lines), as a JSON record when the logs are JSON."""

    json_errors = False  # set by `main` from the command line and CHATDOCK_LOG_FORMAT, before parsing

    def error(self, message: str) -> NoReturn:
        said = f"{message}; `{self.prog} --help` lists what it takes"
        if _Parser.json_errors:
            _record(logging.ERROR, f"{self.prog}: {said}")
        else:
            print(f"{self.prog}: error: {said}", file=sys.stderr)
        sys.exit(2)


def _record(level: int, text: str) -> None:
    """One JSON record on stderr, as --log-format json writes a log line, whatever --log-level: a command's
    own words (why it stopped, what it did), not a log line to filter."""
    said = logger.makeRecord(logger.name, level, __file__, 0, "%s", (text,), None)
    print(logs.JsonLines().format(said), file=sys.stderr)


class _Unreadable(Exception):
    pass


class _LogFlags(argparse.ArgumentParser):
    """The two --log-* flags alone, read as the command's parser reads them (`--log-f json` too)."""

    def error(self, message: str) -> NoReturn:
        raise _Unreadable(message)


def _asks_json(argv: Sequence[str]) -> bool:
    """Whether a command line (or CHATDOCK_LOG_FORMAT) asks for JSON logs, read before it is parsed."""
    flags = _LogFlags(add_help=False)
    flags.add_argument("--log-format", default=os.environ.get("CHATDOCK_LOG_FORMAT") or "")
    flags.add_argument("--log-level")
    try:
        given = flags.parse_known_args(argv)[0].log_format
    except _Unreadable:  # the command's parser refuses it too, in words that may then be text
        given = os.environ.get("CHATDOCK_LOG_FORMAT") or ""
    return str(given).lower() == "json"


def _number(kind: type[int] | type[float], least: float, env: str | None = None) -> Any:
    """An argparse type for a finite number of at least `least`; its error names the variable a default comes
    from, since argparse reads a default through the same type (a bad CHATDOCK_POOL_SIZE is refused in one
    line, not a traceback)."""
    named = "a whole number" if kind is int else "a number"
    source = f" ({env} sets it when the flag is not given)" if env else ""

    def parsed(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or (isinstance(number, float) and not math.isfinite(number)) or number < least:
            bound = f" of at least {least:g}" if math.isfinite(least) else ""
            raise argparse.ArgumentTypeError(f"must be {named}{bound}{source}, got {value!r}")
        return number

    return parsed


def _choice(choices: Sequence[str], env: str | None, fold: Callable[[str], str]) -> Any:
    """An argparse type for one of `choices`, read in any case; its error names the variable a default comes
    from (argparse does not check a default against `choices`)."""

    def parsed(value: str) -> str:
        if fold(value) not in choices:
            source = f" ({env} sets it when the flag is not given)" if env else ""
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}{source}, got {value!r}")
        return fold(value)

    return parsed


def _parsed_default(action: argparse.Action) -> object:
    """A flag's default as the parsed arguments hold it: argparse passes a default given as text (from the
    environment: CHATDOCK_METRICS_PORT) through the flag's type; one its type refuses is left as it is."""
    if isinstance(action.default, str) and callable(action.type):
        with contextlib.suppress(Exception):
            return action.type(action.default)
    return action.default


def _without_password(db: str) -> str:
    """`db` as --help may show it: a URL's password (from CHATDOCK_DB, on a shared screen), before the host or
    as its `password=` parameter, as ***. A URL that cannot be read is not shown at all (it may hold a password;
    opening it says what is wrong)."""
    try:
        parts = urllib.parse.urlsplit(db)
    except ValueError:
        return "(a database URL that cannot be read)"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def _common(parser: argparse.ArgumentParser) -> None:
    db = os.environ.get("CHATDOCK_DB") or default_db()
    shown = "none, no home folder" if db == NO_HOME else _without_password(db).replace("%", "%%")
    parser.add_argument(
        "--db",
        default=db,
        help="SQLite database file, created with its folder on first use; ':memory:' for a throwaway run; or "
        "postgresql://user:password@host:port/database to share one database between replicas "
        f"(env CHATDOCK_DB; default: {shown})",
    )
    parser.add_argument(
        "--pool-size",
        type=_number(int, 1, "CHATDOCK_POOL_SIZE"),
        default=os.environ.get("CHATDOCK_POOL_SIZE") or 10,
        metavar="N",
        help="with PostgreSQL: connections this process opens at most; size the server's max_connections for "
        "replicas x N, plus one listening connection each (env CHATDOCK_POOL_SIZE; default: %(default)s)",
    )
    parser.add_argument(
        "--db-timeout",
        type=_number(float, 0.1, "CHATDOCK_DB_TIMEOUT"),
        default=os.environ.get("CHATDOCK_DB_TIMEOUT") or 10.0,
        metavar="SECONDS",
        help="with PostgreSQL: the longest wait to connect, for a free connection, or for one statement "
        "(env CHATDOCK_DB_TIMEOUT; default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CHATDOCK_LOG_LEVEL") or "WARNING",
        type=_choice(LEVELS, "CHATDOCK_LOG_LEVEL", str.upper),
        choices=LEVELS,
        help="how much to log to stderr (env CHATDOCK_LOG_LEVEL; default: %(default)s)",
    )
    _log_format(parser)


def _log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        default=os.environ.get("CHATDOCK_LOG_FORMAT") or "text",
        type=_choice(FORMATS, "CHATDOCK_LOG_FORMAT", str.lower),
        choices=FORMATS,
        help="text: a line of words per event; json: one JSON object per line, with time, level, logger, message "
        "and, when there are, request_id, org, trace_id and traceback (env CHATDOCK_LOG_FORMAT; default: %(default)s)",
    )


# a Host header's host (a name, an address, [an IPv6 one]) and port (or `*`): nothing the SDK compares it
# with as text is refused but white space, `/` and what cannot end a host (the SDK matches `host:*` by prefix)
HOST_HEADER = re.compile(r"(\[[^\]\s/]+\]|[^\s/:\[\]]+)(:(?:[0-9]{1,5}|\*))?")


def host_header(value: str) -> str:
    """An --allowed-host: a Host header as clients send it, HOST or HOST:PORT (the port may be `*`)."""
    if not HOST_HEADER.fullmatch(value):
        raise argparse.ArgumentTypeError(
            "must be a Host header as clients send it, HOST or HOST:PORT (chatdock.internal, "
            f"chatdock.internal:8765, 10.0.0.5:*, [::1]:8765), got {value!r}"
        )
    return value


def _network(value: str, what: str) -> str:
    """An address or a network, as ipaddress reads it (a network with host bits set, 127.0.0.1/8, is refused
    with the one meant: uvicorn would take it for a name no address matches); `what` says what it must be."""
    try:
        ipaddress.ip_network(value)
    except ValueError:
        try:
            meant = f"; did you mean {ipaddress.ip_network(value, strict=False)}?"
        except ValueError:
            meant = ""
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}{meant}") from None
    return value


def proxy_address(value: str) -> str:
    """A --forwarded-allow-ips: a proxy's address, a network, or `*`, as uvicorn reads it."""
    return value if value == "*" else _network(value, "a proxy's address (10.0.0.5), a network (10.0.0.0/8) or '*'")


def client_network(value: str) -> str:
    """A --metrics-allow: a client's address or a network (10.0.0.5, 10.0.0.0/8, ::/0 for any IPv6)."""
    return _network(value, "an address (10.0.0.5) or a network (10.0.0.0/8; 0.0.0.0/0 and ::/0 for any)")


def organization(value: str) -> str:
    """An organization's name as every command takes it (--org, CHATDOCK_ORG): an id's rules, NFC among them,
    so that one name typed two ways (macOS types an accent apart) is one organization."""
    try:
        return check.identifier(value, "--org")
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _org(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--org",
        type=organization,
        default=os.environ.get("CHATDOCK_ORG") or "default",
        help="the organization (tenant) to act for (env CHATDOCK_ORG; default: %(default)s)",
    )


def _only_org(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--org",
        type=organization,
        default=os.environ.get("CHATDOCK_ORG"),
        help=f"{what} (env CHATDOCK_ORG; default: every organization)",
    )


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="chatdock",
        description="Cross-channel conversation memory for agents, served over the Model Context Protocol.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve MCP over stdio (default) or streamable HTTP (--http)")
    _common(serve)
    _org(serve)
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="serve only the read-only tools, the resources and the prompt; with --http, also only the REST routes "
        "that read, and an inspector (/ui) that cannot edit",
    )
    serve.add_argument(
        "--durability",
        choices=DURABILITIES,
        type=_choice(DURABILITIES, "CHATDOCK_DURABILITY", str.lower),
        default=os.environ.get("CHATDOCK_DURABILITY") or "normal",
        help="with SQLite: normal: a process crash loses nothing acknowledged, a power loss may lose the last moments; "
        "full: nothing acknowledged is lost even on power loss, each commit waits for the disk "
        "(env CHATDOCK_DURABILITY; default: %(default)s)",
    )
    serve.add_argument(
        "--http", action="store_true", help="serve streamable HTTP at /mcp (API key required) instead of stdio"
    )
    serve.add_argument("--host", default="127.0.0.1", help="with --http: address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8765, help="with --http: port to listen on (default: %(default)s)")
    serve.add_argument(
        "--read-timeout",
        type=_number(float, 0.1),
        default=10.0,
        metavar="SECONDS",
        help="with --http: time for a request's headers, and the longest pause inside its body, before the "
        "connection is closed (default: %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=_number(int, 1),
        metavar="N",
        help="with --http: open connections at most; beyond it, connections that have not sent a request yet "
        "are closed first (default: what the open-file limit allows)",
    )
    serve.add_argument(
        "--max-listens-per-org",
        type=_number(int, 1),
        default=256,
        metavar="N",
        help="per organization: open listen streams, sessions subscribed to resources, and with --http "
        "initialize-era event streams (the GET on /mcp) and contacts' event streams (GET /contacts/ID/events: "
        "a voice call's watch, an inspector tab), each up to N (default: %(default)s)",
    )
    serve.add_argument(
        "--max-sessions-per-org",
        type=_number(int, 1),
        default=1000,
        metavar="N",
        help="with --http: initialize-era sessions per organization (default: %(default)s)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        action="append",
        default=[],
        type=proxy_address,
        metavar="ADDRESS",
        help="with --http behind a proxy: an address (or network, or '*') of a proxy whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (repeatable); without it a client's address is the socket's, so a "
        "forged X-Forwarded-For cannot dodge the wrong-key limit or the log",
    )
    serve.add_argument(
        "--oauth-issuer",
        metavar="URL",
        help="with --http: also accept OAuth access tokens (JWTs) this issuer signs for --public-url, beside the "
        "API keys; the protected-resource metadata names it (docs/oauth.md)",
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="with --oauth-issuer: chatdock's URL as clients reach it, the tokens' audience "
        "(default: http://HOST:PORT)",
    )
    serve.add_argument(
        "--oauth-org-claim",
        default="org_id",
        metavar="NAME",
        help="with --oauth-issuer: the token claim that names the organization (default: %(default)s)",
    )
    serve.add_argument(
        "--oauth-clock-skew",
        type=_number(float, 0),
        default=60.0,
        metavar="SECONDS",
        help="with --oauth-issuer: how far a token's exp and nbf may be off, 0 to 60 (default: %(default)s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_number(int, -math.inf, "CHATDOCK_METRICS_PORT"),  # its range is checked with --port's
        default=os.environ.get("CHATDOCK_METRICS_PORT") or None,
        metavar="PORT",
        help="with --http: serve GET /metrics (Prometheus) on this port only, off the main listener; without it "
        "/metrics is served beside /mcp, without a key (env CHATDOCK_METRICS_PORT)",
    )
    serve.add_argument(
        "--metrics-allow",
        action="append",
        default=[],
        type=client_network,
        metavar="NETWORK",
        help="with --http, without --metrics-port: a client address or network that may read /metrics on the main "
        "listener (repeatable; default: loopback and private networks; it names organizations)",
    )
    serve.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="with --metrics-port: the address it listens on (default: --host's)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        type=host_header,
        metavar="HOST[:PORT]",
        help="with --http on a non-loopback --host: a Host header to accept (repeatable); keeps DNS-rebinding "
        "protection on",
    )
    # what serve does with these without --http: nothing (it speaks stdio); a user who gives one is told
    serve.set_defaults(
        http_only={
            action.dest: (action.option_strings[0], _parsed_default(action))
            for action in serve._actions
            if action.help and action.help.startswith(("with --http", "with --oauth-issuer", "with --metrics-port"))
        }
    )

    keys = commands.add_parser("keys", help="create, list and revoke API keys for the HTTP transport")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key for an organization; it is printed once")
    _common(create)
    _org(create)
    create.add_argument("--name", help="a name to tell the key apart (unique among live keys)")
    create.add_argument(
        "--read-only",
        action="store_true",
        help="a key that may read (context, search, contacts, the inspector without its writes) and is refused "
        "every write: for support staff and dashboards",
    )
    listing = key_commands.add_parser(
        "list", help="list keys: prefix, name, org, access (read or write), created, last used, revoked"
    )
    _common(listing)
    _only_org(listing, "only this organization's keys")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its prefix or name")
    _common(revoke)
    _only_org(revoke, "revoke only a key of this organization")
    revoke.add_argument("key", metavar="PREFIX_OR_NAME")
    checking = commands.add_parser("check", help="check the database file for damage (SQLite's integrity check)")
    _common(checking)
    migrating = commands.add_parser(
        "migrate",
        help="upgrade the database's schema to this chatdock's, saying what it applied (any command that opens "
        "the database does it too); --check only says what is due",
    )
    _common(migrating)
    migrating.add_argument(
        "--check",
        action="store_true",
        help="change nothing: exit 0 when the schema is this chatdock's, 1 when migrations are due (listed), 2 "
        "when it cannot tell or must not go on (no database, unreachable, one a newer chatdock migrated: the "
        "message says which)",
    )
    exporting = commands.add_parser(
        "export",
        help="write history (chats, aliases, then messages) as JSON Lines, each in the order stored, streaming",
    )
    _common(exporting)
    _only_org(exporting, "only this organization (each line names its own)")
    exporting.add_argument(
        "--contact",
        metavar="ID",
        help="only this contact's chats, aliases and messages (with --org, named by any of its identifiers)",
    )
    exporting.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (replaced only once the export is whole); default stdout"
    )
    exporting.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    importing = commands.add_parser(
        "import", help="read history from JSON Lines (as export writes them); ids and timestamps are kept"
    )
    _common(importing)
    importing.add_argument("file", metavar="FILE", help="the JSON Lines file; '-' reads standard input")
    importing.add_argument(
        "--org",
        type=organization,
        help="import every line into this organization (default: each line's own org; lines without one go to "
        "CHATDOCK_ORG or 'default')",
    )
    importing.add_argument(
        "--skip-invalid", action="store_true", help="import the good lines and list the bad ones, instead of nothing"
    )
    importing.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    bench = commands.add_parser(
        "bench", help="measure chatdock against the raw driver on a temporary database (SQLite, or PostgreSQL)"
    )
    bench.add_argument(
        "--db",
        metavar="POSTGRESQL_URL",
        help="bench PostgreSQL: a server URL; a database of the bench's own is created on it and dropped after "
        "(the user needs CREATEDB). Default: a temporary SQLite file",
    )
    bench.add_argument("--messages", type=int, default=1_000_000, help="messages to build (default: %(default)s)")
    bench.add_argument("--contacts", type=int, default=100_000, help="contacts they spread over (default: %(default)s)")
    bench.add_argument(
        "--rounds", type=int, default=3, help="rounds; each figure is their median (default: %(default)s)"
    )
    bench.add_argument(
        "--compare",
        action="store_true",
        help="also bench, on the same data, LangChain's SQLChatMessageHistory and LlamaIndex's SQLiteChatStore "
        "where installed (from the chatdock checkout: pip install -e '.[compare]'); SQLite only",
    )
    bench.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    bench.add_argument("--log-level", default="WARNING", type=_choice(LEVELS, None, str.upper), choices=LEVELS)
    _log_format(bench)
    return top


def _tell(args: argparse.Namespace, text: str, warning: bool = False, error: bool = False) -> None:
    """A command's word to its user on stderr, whatever --log-level (it is the command's output, not a log
    line): a line of text, or with --log-format json a record (INFO; WARNING when something was left out;
    ERROR for why it stopped), so that stderr stays one JSON object per line."""
    if args.log_format != "json":
        print(text, file=sys.stderr)
    else:
        level = logging.ERROR if error else logging.WARNING if warning else logging.INFO
        _record(level, text.removeprefix("chatdock: "))


def _schema_note(version: int, newest: int) -> str:
    """What a sound file's schema version means to this chatdock (nothing when it is this chatdock's)."""
    if 0 < version < newest:
        return (
            f" (schema version {version}: this chatdock upgrades it to {newest} when it opens it, one-way; "
            "back it up first: docs/operations.md, Upgrading)"
        )
    if version > newest:
        return f" (schema version {version}, of a newer chatdock: this one, which knows up to {newest}, refuses it)"
    return ""


def store_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command that only opens the store (keys, export, import)."""
    return Settings(db=args.db, pool_size=args.pool_size, db_timeout=args.db_timeout)


async def _keys(args: argparse.Namespace) -> int:
    async with store_settings(args).open_store(create=args.keys_command == "create") as store:
        if args.keys_command == "create":
            created = await store.create_api_key(args.org, args.name, args.read_only)
            print(created.key)
            _tell(
                args,
                f"created {'read-only ' if created.info.read_only else ''}key {created.info.prefix} for "
                f"organization {created.info.org!r}; store it now, it is not shown again",
            )
        elif args.keys_command == "list":
            listed = [i for i in await store.list_api_keys() if args.org in (None, i.org)]  # before the header
            print(f"{'PREFIX':<14}{'NAME':<20}{'ORG':<20}{'ACCESS':<8}{'CREATED':<22}{'LAST USED':<22}REVOKED")
            for info in listed:
                print(  # a name or org longer than its column still ends with a space before the next
                    f"{info.prefix:<14}{info.name or '-':<19} {info.org:<19} {'read' if info.read_only else 'write':<8}"
                    f"{info.created_at:%Y-%m-%d %H:%M:%S}   "
                    f"{f'{info.last_used_at:%Y-%m-%d %H:%M:%S}' if info.last_used_at else '-':<22}"
                    f"{f'{info.revoked_at:%Y-%m-%d %H:%M:%S}' if info.revoked_at else '-'}"
                )
        else:
            revoked = await store.revoke_api_key(args.key, args.org)
            print(f"revoked {revoked.prefix}" + (f" ({revoked.name})" if revoked.name else ""))
    return 0


async def _check(args: argparse.Namespace) -> int:
    problems, version, newest = await check_store(args.db)
    if not problems:
        print(f"ok: {args.db} is sound" + _schema_note(version, newest))
        return 0
    print(f"{args.db} is damaged ({len(problems):,} problem(s) found); `chatdock export` saves what can be read:")
    for problem in problems[:100]:
        print(f"  {problem}")
    return 1


async def _migrate(args: argparse.Namespace) -> int:
    """`chatdock migrate`: the database's schema brought to this chatdock's (or, with --check, what is due)."""
    place = _without_password(args.db)
    before = await read_schema(args.db, args.db_timeout)
    if before.applied > before.newest:
        raise newer_schema(place, before.applied, before.newest)
    due = ", ".join(f"{version} ({name})" for version, name in before.due)
    if not before.due:
        print(f"{place}: at schema version {before.version}, this chatdock's; nothing is due")
        return 0
    if args.check:
        print(
            f"{place}: at schema version {before.version}; due: {due}. `chatdock migrate` applies them, one-way "
            "(back up first: docs/operations.md, Upgrading)"
        )
        return 1
    async with store_settings(args).open_store(create=False) as store:
        applied = store.backend.applied  # opening it applies what is due, under the engine's lock
    after = await read_schema(args.db, args.db_timeout)
    if not applied:  # another process (a replica, a second `migrate`) applied them while this one waited
        print(f"{place}: at schema version {after.version}: another process applied what was due; nothing left")
        return 0
    done = ", ".join(f"{version} ({name})" for version, name in before.due if version in applied)
    print(f"{place}: upgraded from schema version {before.version} to {after.version}; applied {done}")
    return 0


def _serve(args: argparse.Namespace) -> None:
    """`chatdock serve`: stdio, or HTTP with its metrics; traced when the OTEL_* variables ask for it."""
    from chatdock.server.ops import tracing

    given = [flag for dest, (flag, default) in args.http_only.items() if getattr(args, dest) != default]
    if given and not args.http:  # else serve would start on stdio, waiting in silence, the flags unused
        raise InvalidInput(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for the HTTP transport: add --http "
            "(without it, chatdock serve speaks MCP over stdio, to the client that started it)"
        )
    if args.public_url and not args.oauth_issuer:
        raise InvalidInput("--public-url names the audience of OAuth tokens: add --oauth-issuer")
    if args.oauth_issuer and not args.public_url and (args.port == 0 or args.host not in ("127.0.0.1", "localhost")):
        # the default, http://HOST:PORT, would be no URL a client reaches (0.0.0.0, a port chosen at start)
        raise InvalidInput(
            f"--oauth-issuer with --host {args.host} --port {args.port} needs --public-url: the URL clients reach "
            "chatdock at (the audience tokens are issued for), such as https://chatdock.example.com"
        )
    for flag, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 0 <= port <= 65535:  # else the resolver wraps it: 99999 listens on 34463
            raise InvalidInput(f"{flag} must be a TCP port, 0 (any free one) to 65535, got {port}")
    if args.metrics_port is not None and args.metrics_port == args.port != 0:
        raise InvalidInput(f"--metrics-port must differ from --port ({args.port}): /metrics is served apart")
    if args.metrics_allow and args.metrics_port is not None:
        raise InvalidInput(
            "--metrics-allow is for /metrics on the main listener; --metrics-port answers whoever reaches it: "
            "choose who can with --metrics-host (an internal address) and drop --metrics-allow"
        )
    if "*" in args.forwarded_allow_ips and len(args.forwarded_allow_ips) > 1:
        raise InvalidInput("--forwarded-allow-ips '*' believes every address: give it alone, or name the proxies")
    stop_tracing = tracing.start(os.environ, one_line=args.log_format == "json")
    settings = Settings(
        db=args.db,
        org=args.org,
        read_only=args.read_only,
        durability=args.durability,
        max_listens=args.max_listens_per_org,
        pool_size=args.pool_size,
        db_timeout=args.db_timeout,
        trusted_proxies=args.forwarded_allow_ips,
        tracing=stop_tracing is not None,
    )
    if args.metrics_allow:
        settings.metrics_clients = tuple(args.metrics_allow)
    try:
        if args.http:
            # the MCP stack is imported only to serve: every other command starts without it
            from chatdock.server.http.app import HttpLimits, serve_http
            from chatdock.server.ops.metrics import Metrics

            settings.metrics = Metrics()
            if args.oauth_issuer:
                from chatdock.server.http.oauth import OAuthSettings

                try:
                    settings.oauth = OAuthSettings(
                        issuer=args.oauth_issuer,
                        public_url=args.public_url or f"http://{args.host}:{args.port}",
                        org_claim=args.oauth_org_claim,
                        clock_skew=args.oauth_clock_skew,
                    )
                except ValueError as exc:
                    raise InvalidInput(str(exc)) from None
            limits = HttpLimits(
                read_timeout=args.read_timeout,
                max_connections=args.max_connections,
                max_sessions_per_org=args.max_sessions_per_org,
            )
            metrics_at = None if args.metrics_port is None else (args.metrics_host or args.host, args.metrics_port)
            serve_http(settings, args.host, args.port, args.allowed_host, limits, metrics_at=metrics_at)
        else:
            if sys.stdin is None:  # a container's process started without --http: a traceback, exit 1 (an SRE)
                raise InvalidInput(
                    "stdin is closed: chatdock serve speaks MCP over stdio, to the client that started it; to serve "
                    "over HTTP, add --http"
                )
            where = (
                settings.db if is_postgres(settings.db) or settings.db == ":memory:" else os.path.abspath(settings.db)
            )
            logger.info("chatdock serving MCP on stdio; database %s", _without_password(where))
            try:
                anyio.run(_serve_stdio, settings)
            except BaseException as exc:
                gone = _client_gone(exc)
                if gone is None:
                    raise
                logger.debug("the client went away with answers on their way", exc_info=True)
                if gone == "interrupted":
                    raise KeyboardInterrupt from None  # Ctrl-C: the command's 130, without a traceback
    finally:
        if stop_tracing is not None:
            stop_tracing()  # the spans still in the exporter's batch go out


def _client_gone(exc: BaseException) -> str | None:
    """Why serving stdio stopped, when nothing went wrong but the other end: "gone" (the client closed its
    pipes with answers still to write: a broken pipe, a stream closed under the writer), "interrupted" (Ctrl-C
    among them); None for anything else. It was a 57-line traceback and exit 1 (found by a desktop user's
    review), though every write was whole."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(exc)
    ended = (BrokenPipeError, ConnectionResetError, anyio.BrokenResourceError, anyio.ClosedResourceError)
    if not leaves or not all(isinstance(leaf, (*ended, KeyboardInterrupt)) for leaf in leaves):
        return None
    return "interrupted" if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves) else "gone"


async def _serve_stdio(settings: Settings) -> None:
    from chatdock.server.mcp.app import build_server

    async with settings.open_store() as store:
        await build_server(settings, store).run_stdio_async()


def _terminate_as_ctrl_c() -> None:
    """SIGTERM (a service manager's stop, a cron job's timeout, `kill`) ends the running command as Ctrl-C does:
    its task is cancelled, so an import says what it imported and an export removes its unfinished file (a
    SIGTERM ended them at once, silent, leaving the file, the whole history in it). The loop's own handler: gone
    with the loop, and there even where SIGINT is ignored (a job started in the background)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def _export(args: argparse.Namespace) -> int:
    from chatdock.server.history.transfer import export_to_path, total_lines

    _terminate_as_ctrl_c()
    skipped: list[str] = []
    async with store_settings(args).open_store(create=False) as store:
        contact = args.contact
        if contact is not None and args.org is not None:  # any of its identifiers; an unknown one is an error
            contact = (await store.get_contact(args.org, contact)).contact_id
        elif contact is not None and await total_lines(store, None, contact) == 0:  # not an empty export, exit 0
            raise InvalidInput(
                f"nothing to export: no chat, alias or message has the contact id {contact!r} in any organization; "
                "to name a contact by another of its identifiers (an alias), give its organization with --org"
            )
        elif contact is None and args.org is not None and await total_lines(store, args.org, None) == 0:
            raise InvalidInput(  # a mistyped --org (or a CHATDOCK_ORG left set) is no empty export, exit 0
                f"nothing to export: the organization {args.org!r} has no chat, alias or message (organization "
                "names are case-sensitive); leave --org and CHATDOCK_ORG out to export every organization"
            )
        written = await export_to_path(store, args.output, args.org, contact, args.quiet, skipped, args.db)
    if args.output not in (None, "-"):
        _tell(args, f"exported {written:,} line(s) to {args.output}")
    if skipped:
        listed = "".join(f"\n  {what}" for what in skipped)
        _tell(args, f"chatdock: the database is damaged; the export holds what could be read, without:{listed}", True)
        return 1
    return 0


async def _import(args: argparse.Namespace) -> int:
    from chatdock.server.history.transfer import import_file, refuse_unreadable, skipped

    _terminate_as_ctrl_c()
    default_org = check.identifier(os.environ.get("CHATDOCK_ORG") or "default", "CHATDOCK_ORG")
    refuse_unreadable(args.file)
    settings = store_settings(args)
    # a new file's lines are checked against an empty store, and the file made only once they pass
    new = is_new_file(args.db)
    async with (Settings(db=":memory:") if new else settings).open_store() as checking:
        target = settings.open_store() if new else None
        report = await import_file(checking, args.file, default_org, args.org, args.skip_invalid, args.quiet, target)
    if report.problems:
        _tell(args, skipped(report.problems).rstrip("\n"), True)
    print(report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _Parser.json_errors = _asks_json(sys.argv[1:] if argv is None else list(argv))
    args = parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.log_format == "json" and hasattr(args, "quiet"):
        args.quiet = True  # a progress bar is no JSON record: stderr stays one record per line
    try:
        if getattr(args, "db", None) == NO_HOME:
            raise InvalidInput(
                "no database named, and no home folder to keep the default one in (HOME is not set); give --db "
                "or CHATDOCK_DB"
            )
        if args.command == "serve":
            _serve(args)
            return 0
        if args.command == "check":
            return asyncio.run(_check(args))
        if args.command == "keys":
            return asyncio.run(_keys(args))
        if args.command == "migrate":
            return asyncio.run(_migrate(args))
        if args.command == "export":
            return asyncio.run(_export(args))
        if args.command == "import":
            return asyncio.run(_import(args))
        if args.command == "bench":
            from chatdock.server.bench.main import main as bench

            if args.messages < 1000 or args.rounds < 1:
                raise InvalidInput("bench needs --messages of at least 1000 and --rounds of at least 1")
            if args.db is not None and not is_postgres(args.db):
                raise InvalidInput(
                    "bench --db takes a postgresql:// server URL; without --db it benches a temporary SQLite file"
                )
            if args.compare:
                from chatdock.server.bench.compare import INSTALL, installed

                if args.db is not None:
                    raise InvalidInput(
                        "bench --compare sets chatdock beside SQLite chat stores: run it without --db "
                        "(on chatdock's SQLite bench)"
                    )
                if not installed():
                    raise InvalidInput(f"bench --compare needs the stores it compares with: {INSTALL}")
            return bench(args.messages, args.contacts, args.rounds, args.json, args.db, args.compare)
    except ChatdockError as exc:
        logger.debug("the trace of what failed", exc_info=True)
        _tell(args, f"chatdock: {exc}", error=True)  # the why, in the format of every other line on stderr
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C; an import's says what it had imported (history/transfer.py)
        if exc.args:
            _tell(args, f"chatdock: {exc}", error=True)
        return 130
    except BrokenPipeError:  # `chatdock export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush says nothing
        return 141  # as a command that SIGPIPE ended
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
