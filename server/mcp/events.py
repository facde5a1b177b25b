"""Change events for every listener of this process, whatever wrote the change (docs/events.md).

The store tells `Events.deliver` of every change: this process's own at commit, other processes' (another
`chatdock serve`, `chatdock import`, a replica) by following the store's change feed, which it does only
while someone here listens. `Events` finds the listeners of the changed contact's URIs in an index keyed by
(organization, URI), so one organization's listeners never cost another's writes anything:

- clients of the 2026-07-28 era listen through `subscriptions/listen`. The SDK's `ListenHandler` subscribes
  each stream to `Events` (the `SubscriptionBus`); `OrgMiddleware` has put the request's organization and
  filter in `listening`, and the stream is filed under the URIs it asked for.
- clients of the `initialize` era send `resources/subscribe`; their sessions get
  `notifications/resources/updated` for those URIs. A session that subscribes or lists the resources
  gets `notifications/resources/list_changed` when a contact appears or is forgotten. A session's
  subscriptions end with it.

Each organization may hold `max_listens` listen streams and as many subscribed sessions; beyond that a
new one is refused with an error that says so. The sends themselves are made by a courier per organization
(delivery.py), within that organization's budget, so that its listeners never slow anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from mcp.server.subscriptions import ServerEvent
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionFilter,
    UnsubscribeRequestParams,
)

from chatdock.server.mcp.delivery import Couriers, Told
from chatdock.server.mcp.org import current_org, listening
from chatdock.server.mcp.resources import CONTACT_URIS, TRANSCRIPT_URI, contact_uri, followed_uri
from chatdock.server.mcp.sdk import connection_of
from chatdock.storage.changes import EVERYTHING, Change

logger = logging.getLogger("chatdock.events")

SPLIT = "follow the rest on another stream or session (one URI of a contact hears every write of it, by any of its ids)"
Listener = Callable[[ServerEvent], None]
Key = tuple[str, str]  # (organization, resource URI)

DEFAULT_MAX_LISTENS = 256
SHUTTING_DOWN = "chatdock is shutting down; listen again in a moment (another replica may serve it)"
MAX_URIS = 1_000  # that one listen stream, or one subscribed session, follows at most
MAX_SPELLINGS = 8  # of one URI, that one session follows (each is told)
MAX_ORG_URI_CHARS = 16 * 2**20  # characters of the URIs an organization's listeners follow, in all


class Events:
    """The index of this process's listeners, and the fan-out of changes to them."""

    def __init__(self, max_listens: int = DEFAULT_MAX_LISTENS, told: Told | None = None) -> None:
        self.max_listens = max_listens
        # listeners are filed under each URI's one spelling (resources.canonical_uri) and told in their own
        # (a listener may follow one URI in several spellings: each is told)
        self._streams: dict[Key, dict[object, tuple[Listener, tuple[str, ...]]]] = defaultdict(dict)
        self._list_streams: dict[str, dict[object, Listener]] = defaultdict(dict)
        self._streams_of: Counter[str] = Counter()
        self._chars_of: Counter[str] = Counter()  # the characters of the URIs each organization's listeners follow
        self._sessions: dict[Key, weakref.WeakKeyDictionary[Any, set[str]]] = defaultdict(weakref.WeakKeyDictionary)
        self._sessions_of: dict[str, weakref.WeakSet[Any]] = defaultdict(weakref.WeakSet)
        self._subscribed_of: dict[str, weakref.WeakSet[Any]] = defaultdict(weakref.WeakSet)  # following a URI
        self._org_of: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # each session's
        self._ending: weakref.WeakSet[Any] = weakref.WeakSet()  # the sessions whose end forgets them (_ends)
        self._uris_of: weakref.WeakKeyDictionary[Any, set[Key]] = weakref.WeakKeyDictionary()  # each session's
        # the subscribed sessions over HTTP by their session id (mcp-session-id); those of them whose event stream
        # (the GET) is open; and what the others were told while theirs was not, which reached no one (the SDK
        # keeps nothing to replay): told again when it opens (`stream_opened`)
        self._by_http_id: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._http_id_of: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._streaming: set[str] = set()  # by session id: a stream may open before its session subscribes
        self._missed: weakref.WeakKeyDictionary[Any, set[str | None]] = weakref.WeakKeyDictionary()
        self._sending: set[asyncio.Task[None]] = set()
        self._couriers = Couriers(self._sends) if told is None else Couriers(self._sends, told)
        self._contact_watchers: set[Callable[[], None]] = set()
        self._closers: list[Callable[[], None]] = []  # what else ends its streams at shut-down (`when_closing`)
        self.closing = False

    # --- who listens ---

    def wanted(self) -> bool:
        """Whether anyone here listens, so the store's feed is worth following."""
        return bool(self._streams_of) or any(self._sessions_of.values())

    def listening(self) -> dict[str, tuple[int, int]]:
        """For each organization with listeners: its listen streams, and its sessions that hear of changes
        (subscribed to a resource, or having listed them); for the server's metrics."""
        orgs = {org for org, count in self._streams_of.items() if count} | {
            org for org, sessions in self._sessions_of.items() if sessions
        }
        return {org: (self._streams_of.get(org, 0), len(self._sessions_of.get(org, ()))) for org in sorted(orgs)}

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """`SubscriptionBus.subscribe`: file a listen stream under its organization's URIs and list flag."""
        org = current_org.get()
        wants = listening.get() or SubscriptionFilter()
        if self.closing:  # a stream opened now would only be cut at the end of the grace
            raise MCPError(INTERNAL_ERROR, SHUTTING_DOWN)
        if self._streams_of[org] >= self.max_listens:
            raise MCPError(
                INVALID_REQUEST,
                f"this organization already has {self.max_listens} listen streams open, the most allowed; "
                "close one (or listen to several URIs on one stream) and try again",
            )
        asked = wants.resource_subscriptions or ()
        if len(asked) > MAX_URIS:
            raise MCPError(
                INVALID_REQUEST, f"a listen stream follows at most {MAX_URIS} URIs, got {len(asked)}; {SPLIT}"
            )
        token = object()
        spelled: dict[Key, list[str]] = {}
        for uri in asked:  # each checked (a URI chatdock serves) before any is filed
            spellings = spelled.setdefault((org, followed_uri(uri)), [])
            if uri not in spellings:
                spellings.append(uri)
        keys = list(spelled)
        cost = sum(len(uri) for spellings in spelled.values() for uri in spellings)
        self._spend(org, cost)
        for key in keys:
            self._streams[key][token] = (listener, tuple(spelled[key]))
        if wants.resources_list_changed:
            self._list_streams[org][token] = listener
        self._streams_of[org] += 1

        def unsubscribe() -> None:
            for key in keys:
                filed = self._streams.get(key, {})
                filed.pop(token, None)
                if not filed:
                    self._streams.pop(key, None)
            lists = self._list_streams.get(org, {})
            lists.pop(token, None)
            if not lists:
                self._list_streams.pop(org, None)
            self._streams_of[org] -= 1
            if self._streams_of[org] <= 0:
                del self._streams_of[org]
            self._spend(org, -cost)

        return _once(unsubscribe)

    def watch_contact(self, org: str, contact_id: str, changed: Callable[[], None]) -> Callable[[], None]:
        """Call `changed()` whenever the contact `contact_id` names (any of its identifiers) changes, until the
        returned function is called: the REST event stream's and the embedded client's listener, filed and
        bounded like a listen stream on the contact's transcript."""
        self._contact_watchers.add(changed)
        org_set = current_org.set(org)
        wants_set = listening.set(SubscriptionFilter(resource_subscriptions=[contact_uri(TRANSCRIPT_URI, contact_id)]))
        try:
            unsubscribe = self.subscribe(lambda _: changed())
        except BaseException:
            self._contact_watchers.discard(changed)
            raise
        finally:
            listening.reset(wants_set)
            current_org.reset(org_set)

        def stop() -> None:
            self._contact_watchers.discard(changed)
            unsubscribe()

        return _once(stop)

    def close(self) -> None:
        """The server is shutting down: `closing` turns true and every contact watcher is woken to see it, so
        event streams end now rather than hold the shut-down for its whole grace period; the listen streams are
        closed gracefully (each ends with its result, so its client knows it was ended on purpose)."""
        self.closing = True
        for changed in list(self._contact_watchers):
            changed()
        for closer in self._closers:
            closer()

    def when_closing(self, closer: Callable[[], None]) -> None:
        """Call `closer` when the server shuts down (`close`)."""
        self._closers.append(closer)

    def attend(self, org: str, session: Any, request: Any = None) -> None:
        """An `initialize`-era session that lists the resources hears when the listing changes (`request`: the
        HTTP request that listed them, if any)."""
        connection = connection_of(session)
        self._sessions_of[org].add(connection)
        self._org_of[connection] = org
        self._ends(connection)
        self._over_http(connection, request)

    def _over_http(self, session: Any, request: Any) -> None:
        """Note the HTTP session id of a session that listens over HTTP (`stream_opened`)."""
        http_id = None if request is None else request.headers.get("mcp-session-id")
        if http_id is not None:
            self._by_http_id[http_id] = session
            self._http_id_of[session] = http_id

    def _ends(self, connection: Any) -> None:
        """Forget the session as it ends (the SDK unwinds its connection's exit stack then): it no longer counts
        against its organization's bound, without waiting for the collector to free it."""
        if connection not in self._ending:
            self._ending.add(connection)
            connection.exit_stack.callback(self._forget, connection)

    def watch(self, org: str, uri: str, session: Any) -> None:
        """An `initialize`-era session subscribes to `uri` (in its own spelling, told in it)."""
        key = (org, followed_uri(uri))
        subscribed = self._subscribed_of[org]
        if session not in subscribed and len(subscribed) >= self.max_listens:
            raise MCPError(
                INVALID_REQUEST,
                f"this organization already has {self.max_listens} subscribed sessions, the most allowed; "
                "unsubscribe or close one and try again",
            )
        followed = self._uris_of.setdefault(session, set())
        if key not in followed and len(followed) >= MAX_URIS:
            raise MCPError(INVALID_REQUEST, f"a session follows at most {MAX_URIS} URIs; {SPLIT}")
        spellings = self._sessions.get(key, {}).get(session, set())
        if uri in spellings:
            return  # followed already, in this spelling
        if len(spellings) >= MAX_SPELLINGS:
            raise MCPError(INVALID_REQUEST, f"a session follows one URI in at most {MAX_SPELLINGS} spellings")
        self._spend(org, len(uri))
        followed.add(key)
        self._sessions[key].setdefault(session, set()).add(uri)
        subscribed.add(session)
        self._sessions_of[org].add(session)
        self._org_of[session] = org
        self._ends(session)

    def unwatch(self, org: str, uri: str, session: Any) -> None:
        """The session unsubscribes from `uri` in that spelling; in another one, from the URI's only spelling
        it follows (any spelling of a URI followed once ends it). A URI that could not be followed is not
        followed: nothing to end."""
        try:
            key = (org, followed_uri(uri))
        except MCPError:
            return
        subscribed = self._sessions.get(key)
        spellings = None if subscribed is None else subscribed.get(session)
        if subscribed is None or spellings is None:
            return
        gone = uri if uri in spellings else next(iter(spellings)) if len(spellings) == 1 else None
        if gone is not None:
            spellings.discard(gone)
            self._spend(org, -len(gone))
            self._missed.get(session, set()).discard(gone)  # no longer followed: not told when the stream opens
        if spellings:
            return
        del subscribed[session]
        if not subscribed:
            del self._sessions[key]
        followed = self._uris_of.get(session, set())
        followed.discard(key)
        if not followed:
            self._subscribed_of[org].discard(session)

    def _spend(self, org: str, chars: int) -> None:
        """Count `chars` more (or, negative, fewer) characters of URIs followed by `org`'s listeners; refused
        past MAX_ORG_URI_CHARS, so that no organization's listeners hold the memory of the process."""
        if chars > 0 and self._chars_of[org] + chars > MAX_ORG_URI_CHARS:
            raise MCPError(
                INVALID_REQUEST,
                f"this organization's listeners already follow {self._chars_of[org]:,} characters of URIs; "
                f"{chars:,} more would pass the {MAX_ORG_URI_CHARS:,} allowed: follow fewer, or shorter, URIs",
            )
        self._chars_of[org] += chars
        if self._chars_of[org] <= 0:
            del self._chars_of[org]

    # --- what changed ---

    def deliver(self, change: Change | object) -> None:
        """Tell the listeners of a changed contact (or, for EVERYTHING, every listener; for a change whose
        aliases are unknown, every listener of its organization) to read again."""
        if change is EVERYTHING:
            for org in {org for org, _ in [*self._streams, *self._sessions]} | {
                *self._list_streams,
                *self._sessions_of,
            }:
                self._everyone_of(org)
            return
        if not isinstance(change, Change):
            return
        if not self._streams_of.get(change.org) and not self._sessions_of.get(change.org):
            return  # no one of its organization listens here (most writes): no URI to spell
        if change.aliases_unknown:  # too many aliases to tell them all (PostgreSQL's NOTIFY payload)
            self._everyone_of(change.org, lists=change.kind != "updated")
            return
        for identifier in (change.contact_id, *change.aliases):  # a contact's URIs under each of its identifiers
            for template in CONTACT_URIS:
                self._updated(change.org, contact_uri(template, identifier))
        if change.kind != "updated":
            self._list_changed(change.org)

    def _everyone_of(self, org: str, lists: bool = True) -> None:
        """Every listener of `org` reads again; with `lists`, the resource list too (a contact may have appeared
        or gone)."""
        for owner, uri in [*self._streams, *self._sessions]:
            if owner == org:
                self._updated(org, uri)
        if lists:
            self._list_changed(org)

    async def publish(self, event: ServerEvent) -> None:
        """`SubscriptionBus.publish`, for events a handler raises itself through `ctx.notify_*`."""
        org = current_org.get(None)
        if org is None:
            return
        if isinstance(event, ResourceUpdated):
            self._updated(org, event.uri)
        elif isinstance(event, ResourcesListChanged):
            self._list_changed(org)

    def _updated(self, org: str, uri: str) -> None:
        if (org, uri) in self._streams or (org, uri) in self._sessions:
            self._couriers.mark(org, uri)

    def _list_changed(self, org: str) -> None:
        if org in self._list_streams or self._sessions_of.get(org):
            self._couriers.mark(org, None)

    def _sends(self, org: str, uri: str | None) -> list[Callable[[], None]]:
        """A send for each listener of `uri` (None: of the resource list) in `org`, as they are now; each hears
        the URI as it spelled it."""
        if uri is None:
            changed: ServerEvent = ResourcesListChanged()
            sends: list[Callable[[], None]] = [
                partial(_call, listener, changed) for listener in self._list_streams.get(org, {}).values()
            ]
            return sends + [partial(self._notify, session, None) for session in self._sessions_of.get(org, ())]
        sends = [
            partial(_call, listener, ResourceUpdated(uri=one))
            for listener, spelled in self._streams.get((org, uri), {}).values()
            for one in spelled
        ]
        sessions = list(self._sessions.get((org, uri), {}).items())
        return sends + [partial(self._notify, session, one) for session, spelled in sessions for one in spelled]

    def _notify(self, session: Any, uri: str | None) -> None:
        http_id = self._http_id_of.get(session)
        if http_id is not None and http_id not in self._streaming:
            self._missed.setdefault(session, set()).add(uri)  # at most what it follows (unwatch), and the list
        self._send(session, session.send_resource_list_changed() if uri is None else session.send_resource_updated(uri))

    def _send(self, session: Any, notification: Coroutine[Any, Any, None]) -> None:
        async def send() -> None:
            try:
                await notification
            except Exception as exc:  # the session is gone: its subscriptions end with it
                logger.debug("dropping a session that could not be notified: %s", exc)
                self._forget(session)

        task = asyncio.get_running_loop().create_task(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _forget(self, session: Any) -> None:
        """The session ended: out of the index, at the cost of its own URIs (not of every listener's)."""
        org = self._org_of.pop(session, None)
        for key in self._uris_of.pop(session, set()):
            sessions = self._sessions.get(key)
            if sessions is not None:
                spellings = sessions.pop(session, set())
                if org is not None:
                    self._spend(org, -sum(len(uri) for uri in spellings))
                if not sessions:
                    del self._sessions[key]
        if org is not None:
            self._sessions_of[org].discard(session)
            self._subscribed_of[org].discard(session)

    def stream_opened(self, http_id: str) -> None:
        """The event stream (the GET on /mcp) of the `initialize`-era HTTP session `http_id` is open: it is told
        what it missed while it had none (a proxy cut it, and the SDK opened it again a second later)."""
        self._streaming.add(http_id)
        session = self._by_http_id.get(http_id)
        for uri in () if session is None else self._missed.pop(session, set()):
            self._notify(session, uri)

    def stream_closed(self, http_id: str) -> None:
        """The session's event stream ended: what it is told from now on is kept for when it opens again."""
        self._streaming.discard(http_id)

    # --- the initialize era's requests ---

    async def on_subscribe(self, ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        session = connection_of(ctx.session)
        self.watch(current_org.get(), str(params.uri), session)
        self._over_http(session, ctx.request)
        return EmptyResult()

    async def on_unsubscribe(self, ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        self.unwatch(current_org.get(), str(params.uri), connection_of(ctx.session))
        return EmptyResult()


def _call(listener: Listener, event: ServerEvent) -> None:
    try:
        listener(event)
    except Exception:  # fan-out boundary: one broken stream must not starve the others
        logger.exception("a listen stream raised; continuing")


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run
