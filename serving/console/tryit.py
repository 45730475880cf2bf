"""The Try it page: a user's recommendations from the running predictor, feedback sent through
the events API, and what changed in the next answer.

The console asks the predictor exactly as any client does (a user id and k, nothing else): the
user's fresh history comes from the predictor's own online store, fed by the events service. So
after an event is stored the console asks again, a few times within `FRESH_WITHIN_SECONDS` (the
predictor takes an event into account on a request within about a second of its 2xx), until the
answer changes; the page then marks new items and moves, and lists what left the list.

Titles, genres and years come from the `items.parquet` of the artifact that answered (found by
its `model_version` among the run home's served models, else downloaded from the registry).
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serving.console.clients import Answer, Refused, Unavailable
from serving.console.recent import Recent

MAX_ID_CHARS = 256  # the events contract's limit on ids
MAX_K = 50
DEFAULT_K = 10
FRESH_WITHIN_SECONDS = 2.0
BECAUSE_SHOWN = 2  # history titles in an item's "Because you liked ..." line
POLL_SECONDS = 0.15
# What each button sends (the feedback contract's event types). A "view" is a click on the item.
ACTIONS = {"view": "click", "like": "like", "dislike": "dislike", "rate": "rating"}
# Events that join the user's history: the predictor stops recommending the item.
REMOVES_ITEM = {"click", "like", "rating", "consume"}


def check_user_id(text: str | None) -> str:
    """The user id as the predictor and the events API take it, or `Refused` saying why not."""
    value = (text or "").strip()
    if not value:
        raise Refused("user id: type one (any text; a user the model has not seen gets the "
                      "cold-start answer)")
    if len(value) > MAX_ID_CHARS:
        raise Refused(f"user id: {len(value)} characters, the limit is {MAX_ID_CHARS}")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise Refused("user id: contains control characters")
    return value


def check_k(text: str | int | None) -> int:
    try:
        k = int(text) if text not in (None, "") else DEFAULT_K
    except (TypeError, ValueError):
        raise Refused(f"k: {text!r} is not a whole number") from None
    if not 1 <= k <= MAX_K:
        raise Refused(f"k: must be between 1 and {MAX_K}, got {k}")
    return k


@dataclass
class Item:
    item_id: str
    title: str
    genres: list[str]
    year: int | None


@dataclass
class Why:
    """One item's explanation as the page shows it (from the predictor's `explanations`)."""

    because: list[str]  # titles of the history items behind it, largest contribution first
    fresh: list[str]  # which of those the user did since training
    reason: str | None = None  # "most popular" for a cold-start answer
    proposed_by: list[str] = field(default_factory=list)  # "ease #3", ...
    score: float | None = None  # the ranker's raw score
    bias: float | None = None
    groups: list[tuple[str, float]] = field(default_factory=list)  # largest |contribution| first
    next_title: str | None = None
    next_difference: float | None = None
    next_groups: list[tuple[str, float]] = field(default_factory=list)

    def versus(self, group: str) -> float | None:
        """This item's contribution of `group` minus the next item's."""
        return dict(self.next_groups).get(group)

    def because_text(self) -> str:
        if self.reason and not self.because:
            return self.reason[:1].upper() + self.reason[1:]
        return "Because you liked " + ", ".join(self.because[:BECAUSE_SHOWN]) if self.because else ""


@dataclass
class ShownItem:
    position: int  # 0-based, as the events carry it
    item: Item
    score: float
    change: str = "same"  # "new" | "up" | "down" | "same"
    moved: int = 0  # places up (+) or down (-)
    why: Why | None = None


@dataclass
class Shown:
    """An answer as the page shows it, compared with the answer before it (if any)."""

    answer: Answer
    items: list[ShownItem]
    dropped: list[Item] = field(default_factory=list)
    compared: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.dropped) or any(i.change != "same" for i in self.items)

    def summary(self) -> str:
        new = sum(i.change == "new" for i in self.items)
        moved = sum(i.change in ("up", "down") for i in self.items)
        parts = [f"{new} new" if new else "", f"{moved} moved" if moved else "",
                 f"{len(self.dropped)} left the list" if self.dropped else ""]
        return ", ".join(p for p in parts if p) or "no change"


class Catalogue:
    """Item metadata of each artifact version, loaded once."""

    def __init__(self, home: Path, registry_lookup: Callable[[str], Path | None] | None = None):
        self.home = home
        self.registry_lookup = registry_lookup
        self._tables: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()
        self._recent = Recent(10.0)
        self._users: dict[Path, list[str]] = {}

    def _served_dirs(self) -> dict[str, Path]:
        """artifact model_version -> directory, for the artifacts the local deploy downloaded."""
        return self._recent.get("served", self._find_served_dirs)

    def _find_served_dirs(self) -> dict[str, Path]:
        found = {}
        for manifest in sorted(self.home.glob("served/*/*/model/manifest.json")):
            try:
                found[str(json.loads(manifest.read_text()).get("model_version"))] = manifest.parent
            except (OSError, ValueError):
                continue
        return found

    def registered_version(self, model_version: str) -> str | None:
        """The MLflow version of an artifact version the local deploy downloaded
        (`served/<model>/<MLflow version>/model`)."""
        directory = self._served_dirs().get(model_version)
        return directory.parent.name if directory is not None else None

    def table(self, model_version: str) -> pd.DataFrame | None:
        # An interleaved answer is "<champion>+<challenger>": both share the catalogue.
        version = model_version.split("+")[0].split(",")[0]
        with self._lock:
            if version in self._tables:
                return self._tables[version]
            directory = self._served_dirs().get(version)
            if directory is None and self.registry_lookup is not None:
                directory = self.registry_lookup(version)
            if directory is None or not (directory / "items.parquet").exists():
                if self._tables:  # another version's catalogue beats bare ids
                    return next(iter(self._tables.values()))
                return None
            items = pd.read_parquet(directory / "items.parquet")
            items["item_id"] = items["item_id"].astype(str)
            self._tables[version] = items.set_index("item_id")
            return self._tables[version]

    def users(self, model_version: str | None, count: int = 8) -> list[str]:
        """A few users of the model, spread over its user list, to pick from."""
        dirs = self._served_dirs()
        directory = dirs.get(model_version or "") or next(iter(dirs.values()), None)
        if directory is None or not (directory / "users.parquet").exists():
            return []
        if directory not in self._users:
            ids = pd.read_parquet(directory / "users.parquet", columns=["user_id"])["user_id"]
            ids = sorted(ids.astype(str), key=lambda u: (len(u), u))
            self._users[directory] = ids[:: max(1, len(ids) // count)][:count]
        return self._users[directory]

    def describe(self, item_ids: list[str], model_version: str) -> list[Item]:
        table = self.table(model_version)
        out = []
        for item_id in item_ids:
            row = table.loc[item_id] if table is not None and item_id in table.index else None
            if row is None:
                out.append(Item(item_id, f"item {item_id}", [], None))
                continue
            title = str(row.get("title") or "") or f"item {item_id}"
            genres = str(row.get("genres") or "")
            year = row.get("year")
            out.append(Item(item_id, title, [g for g in genres.split("|") if g],
                            int(year) if pd.notna(year) else None))
        return out


def registry_items_lookup(registry) -> Callable[[str], Path | None]:
    """Find an artifact version in the registry and download its items file (a cluster
    console has no served copies)."""
    cache = Path(tempfile.mkdtemp(prefix="recsys-console-items-"))

    def lookup(model_version: str) -> Path | None:
        import mlflow

        try:
            rows = registry.versions()
        except Unavailable:
            return None
        for row in rows:
            if row.model_version == model_version:
                target = cache / row.version
                if not (target / "items.parquet").exists():
                    try:
                        mlflow.artifacts.download_artifacts(
                            artifact_uri=f"{row.source}/items.parquet", dst_path=str(target),
                            tracking_uri=registry.tracking_uri)
                    except Exception:  # noqa: BLE001 (any download failure: bare ids instead)
                        return None
                return target
        return None

    return lookup


def _sorted_groups(groups: dict | None) -> list[tuple[str, float]]:
    pairs = [(str(k), float(v)) for k, v in (groups or {}).items() if isinstance(v, (int, float))]
    return sorted(pairs, key=lambda kv: (-abs(kv[1]), kv[0]))


def explained(answer: Answer, catalogue: Catalogue) -> dict[str, Why]:
    """Each answered item's `Why`, from the answer's explanation (empty without one)."""
    explanation = answer.explanation or {}
    entries = [e for e in explanation.get("items") or [] if isinstance(e, dict)]
    titles = {e.get("item_id"): e.get("title") for e in entries}
    reason = explanation.get("reason") if explanation.get("kind") == "cold_start" else None
    out = {}
    for entry in entries:
        because = [b for b in entry.get("because") or [] if isinstance(b, dict)]
        named = [b.get("title") or catalogue.describe([str(b.get("item_id"))],
                                                      answer.model_version)[0].title
                 for b in because]
        ranker = entry.get("ranker") or {}
        following = entry.get("versus_next") or {}
        following_id = following.get("item_id")
        out[str(entry.get("item_id"))] = Why(
            because=named,
            fresh=[name for name, b in zip(named, because) if b.get("fresh")],
            reason=reason,
            proposed_by=[f"{g.get('name')} #{g.get('rank')}" for g in entry.get("generators") or []
                         if isinstance(g, dict)],
            score=ranker.get("raw_score"), bias=ranker.get("bias"),
            groups=_sorted_groups(ranker.get("groups")),
            next_title=(titles.get(following_id) or f"item {following_id}") if following_id else None,
            next_difference=following.get("difference"),
            next_groups=_sorted_groups(following.get("groups")),
        )
    return out


def compare(answer: Answer, catalogue: Catalogue, before: list[str] | None) -> Shown:
    """The answer with each item's change since `before` (the ids shown previously, in order),
    and why each item is there when the answer came with an explanation."""
    items = catalogue.describe(answer.item_ids, answer.model_version)
    whys = explained(answer, catalogue)
    shown = [ShownItem(n, item, score, why=whys.get(item.item_id))
             for n, (item, score) in enumerate(zip(items, answer.scores))]
    if before is None:
        return Shown(answer, shown)
    previous = {item_id: n for n, item_id in enumerate(before)}
    for entry in shown:
        was = previous.get(entry.item.item_id)
        if was is None:
            entry.change = "new"
        elif was != entry.position:
            entry.change = "up" if entry.position < was else "down"
            entry.moved = was - entry.position
    now = set(answer.item_ids)
    dropped = catalogue.describe([i for i in before if i not in now], answer.model_version)
    return Shown(answer, shown, dropped, compared=True)


def ask_until_changed(ask: Callable[[], Answer], before: list[str], item_id: str,
                      event_type: str, *, within: float = FRESH_WITHIN_SECONDS,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[Answer, bool]:
    """Ask again until the answer reflects the event (the item left the list, for events that
    join the history; any change otherwise), at most `within` seconds. Returns the last answer
    and whether it changed."""
    deadline = time.monotonic() + within
    while True:
        answer = ask()
        if event_type in REMOVES_ITEM:
            if item_id not in answer.item_ids:
                return answer, answer.item_ids != before
        elif answer.item_ids != before:
            return answer, True
        if time.monotonic() + POLL_SECONDS > deadline:
            return answer, answer.item_ids != before
        sleep(POLL_SECONDS)


def feedback_event(action: str, *, user_id: str, item_id: str, value: str | None,
                   request_id: str | None, model_version: str | None,
                   position: str | None) -> dict:
    """The event a button sends, checked enough to say what is wrong in words."""
    if action not in ACTIONS:
        raise Refused(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    if not item_id:
        raise Refused("item: missing")
    event: dict = {"type": ACTIONS[action], "user_id": user_id, "item_id": item_id}
    if action == "rate":
        try:
            rating = float(value or "")
        except ValueError:
            raise Refused("rating: choose a value from 1 to 5") from None
        if not 0.5 <= rating <= 5:
            raise Refused(f"rating: {rating:g} is outside 0.5 to 5")
        event["value"] = rating
    if request_id:
        event["request_id"] = request_id
    if model_version:
        event["model_version"] = model_version
    if position not in (None, ""):
        try:
            event["position"] = int(position)
        except ValueError:
            raise Refused(f"position: {position!r} is not a whole number") from None
    return event
