"""The message browser: `messages.list`, `messages.get` and `messages.bulk` on this node's
journal (each node answers for its own; a console asks every node).

An item is one delivery (a message for one task) in one state (see
`yptask.store.messages`). A bulk change selects deliveries by message ids or by a
filter, and acts on those its action fits; the others are `skipped`, each with why. A
filter's change is made only when the caller names how many it touches
(`confirm_count`), so nobody changes more than they saw; at most MAX_BULK a call. Each
action is one journal transaction (cancel: one for all its messages), then the pools of
the tasks concerned look again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from yptask.delivery.cancel import Cancels, check_message_id
from yptask.delivery.message_params import (
    FILTER_PARAMS,
    check_filter,
    check_limit,
    cursor_of,
    parse_cursor,
)
from yptask.errors import UnknownMessage
from yptask.ingress import checks
from yptask.ingress.trace import own_trace_id
from yptask.store import messages as queries
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Journal
from yptask.store.messages import MessageFilter

__all__ = ["ACTIONS", "MAX_BULK", "MAX_TOTAL", "Messages"]

log = logging.getLogger(__name__)

MAX_TOTAL = 10_000  # a list counts its matches up to this, then says "10000+"
MAX_BULK = 10_000  # the most deliveries one bulk change touches
# what each action may touch, by state
ACTIONS = {"cancel": {"queued", "delayed", "retrying"},
           "retry_now": {"retrying", "delayed"},
           "replay": {"dead", "expired"},
           "delete": {"queued", "delayed", "retrying", "dead", "expired"},
           "priority": {"queued", "delayed", "retrying"}}

_T = TypeVar("_T")
Notify = Callable[..., None]  # RunningTasks.notify(task, priority=None)


class Messages:
    """Lists, shows and changes the messages of this node's journal."""

    def __init__(self, node_name: str, journal: JournalThread, notify: Notify,
                 cancels: Cancels) -> None:
        self.node_name = node_name
        self._journal = journal
        self._notify = notify  # a task's pool and forwarder look again
        self._cancels = cancels

    async def list_page(self, params: dict[str, Any]) -> dict[str, Any]:
        """One page of the deliveries `params` select, newest first (see docs/api.md)."""
        method = "messages.list"
        selected = check_filter(params, method)
        limit = check_limit(params.get("limit", 100), method)
        after = parse_cursor(params.get("cursor"), method)
        page = dataclasses.replace(selected, after=after)
        now = time.time()
        items, total = await self._read(partial(
            _page, page=page, counted=selected, limit=limit, now=now))
        for item in items:
            item["node"] = self.node_name
            item["trace_id"] = item["trace_id"] or own_trace_id(item["id"])  # not stored
        more = len(items) > limit
        items = items[:limit]
        return {"messages": items, "next": cursor_of(items[-1]) if more else None,
                "total": total if total <= MAX_TOTAL else f"{MAX_TOTAL}+"}

    async def get(self, message_id: Any) -> dict[str, Any]:
        """One message whole: its fields, its deliveries here, its attempt history."""
        mid = check_message_id(message_id, "messages.get")
        found = await self._read(partial(_message, message_id=mid, now=time.time()))
        if found is None:
            raise UnknownMessage(f"messages.get: no message {mid!r} in the journal of node "
                                 f"{self.node_name}")
        found["payload"] = json.loads(found["payload"])
        found["node"] = self.node_name
        found["trace_id"] = found["trace_id"] or own_trace_id(mid)
        return found

    async def bulk(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply an action to deliveries chosen by ids or by a filter (see the docstring)."""
        method = "messages.bulk"
        action = params.get("action")
        if action not in ACTIONS:
            raise checks.bad_param(method, "action", f"one of {', '.join(ACTIONS)}", action)
        priority = 0
        if action == "priority":
            priority = _priority(params.get("priority"), method)
        selected = self._selection(params, method)
        now = time.time()
        if selected.ids is None:  # by filter: only once the caller confirmed the count
            matched = await self._read(partial(queries.count, selected=selected,
                                               up_to=MAX_BULK + 1, now=now))
            _confirm(method, action, matched, params.get("confirm_count"))
        # read beside the journal; each change checks the delivery's state again as it writes
        items = await self._read(partial(queries.rows, selected=selected, limit=MAX_BULK + 1,
                                         now=now))
        if len(items) > MAX_BULK:
            raise checks.bad_param(method, "ids", f"ids of messages with at most {MAX_BULK}"
                                   " deliveries in all", f"{len(items)}+ deliveries")
        fits = ACTIONS[action]
        eligible = [(i["id"], i["task"]) for i in items if i["state"] in fits]
        skipped = [{"id": i["id"], "task": i["task"], "why": f"{i['state']}: {action} "
                    f"takes only {', '.join(sorted(fits))}"}
                   for i in items if i["state"] not in fits]
        skipped += [{"id": mid, "task": None, "why": "no such message here"}
                    for mid in sorted(set(selected.ids or ()) - {i["id"] for i in items})]
        done = await self._act(action, eligible, priority)
        skipped += [{"id": mid, "task": task, "why": "changed meanwhile"}
                    for mid, task in eligible if (mid, task) not in done]
        log.info("node %s: messages.bulk %s: %d matched, %d done, %d skipped", self.node_name,
                 action, len(items), len(done), len(skipped))
        return {"matched": len(items), "done": len(done), "skipped": skipped}

    async def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `query` on a read-only connection of its own, in a thread: beside the journal's
        thread, never holding up its commits."""
        def read() -> _T:
            db = queries.read_only(self._journal.journal.path)
            try:
                return query(db)
            finally:
                db.close()
        return await asyncio.to_thread(read)

    def _selection(self, params: dict[str, Any], method: str) -> MessageFilter:
        """The deliveries a bulk change names: by `ids`, or by `filter` (exactly one)."""
        ids, chosen = params.get("ids"), params.get("filter")
        if (ids is None) == (chosen is None):
            raise checks.bad_param(method, "ids", "a list of message ids, or null with a "
                                   "`filter` (exactly one of the two)", ids)
        if ids is not None:
            if not isinstance(ids, list) or not 0 < len(ids) <= MAX_BULK:
                raise checks.bad_param(method, "ids", f"a list of 1 to {MAX_BULK} message ids",
                                       ids)
            return MessageFilter(ids=tuple(dict.fromkeys(
                checks.check_id(mid, method, tick=True, param="ids") or "" for mid in ids)))
        if not isinstance(chosen, dict) or not chosen.keys() <= set(FILTER_PARAMS):
            raise checks.bad_param(method, "filter", "an object of messages.list's filter "
                                   f"params ({', '.join(FILTER_PARAMS)})", chosen)
        return check_filter(chosen, method, prefix="filter.")

    async def _act(self, action: str, deliveries: list[tuple[str, str]],
                   priority: int) -> set[tuple[str, str]]:
        """Make the change; the deliveries it was made to."""
        if not deliveries:
            return set()
        if action == "cancel":
            answers = await self._cancels.cancel_many_here(
                list(dict.fromkeys(mid for mid, _ in deliveries)))
            return {(mid, task) for mid, task in deliveries if task in answers[mid][0]}
        changed = await self._journal.run(partial(
            Journal.change_waiting, action=action, deliveries=deliveries, priority=priority))
        if action != "delete":  # due now, or claimable in a new order: the pools look now
            for task in dict.fromkeys(task for _, task in changed):
                self._notify(task, priority if action == "priority" else None)
        return set(changed)


def _page(db: sqlite3.Connection, page: MessageFilter, counted: MessageFilter, limit: int,
          now: float) -> tuple[list[dict[str, Any]], int]:
    """One more than a page of items (so the caller knows whether more follow), and how
    many the filter matches in all (counted up to one past MAX_TOTAL), in one snapshot."""
    db.execute("BEGIN")
    try:
        return (queries.rows(db, page, limit + 1, now),
                queries.count(db, counted, MAX_TOTAL + 1, now))
    finally:
        db.execute("COMMIT")


def _message(db: sqlite3.Connection, message_id: str, now: float) -> dict[str, Any] | None:
    """The message, its deliveries and its attempts, in one snapshot; None if unknown."""
    db.execute("BEGIN")
    try:
        found = queries.message(db, message_id)
        if found is None:
            return None
        deliveries = queries.rows(db, MessageFilter(ids=(message_id,)), limit=10_000, now=now)
        errors, dead = found.pop("last_errors"), found.pop("dead")
        found["deliveries"] = [
            {key: item[key] for key in ("task", "state", "priority", "not_before", "attempt")}
            | ({"last_error": errors[item["task"]]} if item["task"] in errors else {})
            | dead.get(item["task"], {})
            for item in reversed(deliveries)]
        found["attempts"] = queries.attempts(db, message_id)
        return found
    finally:
        db.execute("COMMIT")


def _priority(value: Any, method: str) -> int:
    if value is None:
        raise checks.bad_param(method, "priority", "an integer from 0 to 9 (the action "
                               "\"priority\" sets it)", value)
    return checks.check_priority(value, method)


def _confirm(method: str, action: str, matched: int, confirm: Any) -> None:
    """Refuse a filter's change unless `confirm` is the number of deliveries it matches."""
    if matched > MAX_BULK:
        raise checks.bad_param(method, "filter", f"a filter that matches at most {MAX_BULK}"
                               " deliveries", f"one matching more than {MAX_BULK}")
    if isinstance(confirm, bool) or confirm != matched:
        raise checks.bad_param(method, "confirm_count", f"{matched}: {action} would touch "
                               f"the {matched} deliveries this filter matches now (give their "
                               "number to confirm)", confirm)
