"""The antispam consumer: screens uploads for spam words and flags offenders.

Settings: `words` (list of spam words, lower case) and `threshold` (how many
hits make a photo spam, default 1).
"""

from __future__ import annotations

import re
from typing import Any

from yptask.tasks.base import BaseTask

_WORD = re.compile(r"\w+", re.UNICODE)
DEFAULT_WORDS = ("casino", "viagra", "lottery", "winner")


class AntiSpam(BaseTask):
    """Scores each uploaded photo's text against a spam word list."""

    def setup(self) -> None:
        self.words = frozenset(w.lower() for w in self.settings.get("words", DEFAULT_WORDS))
        self.threshold = int(self.settings.get("threshold", 1))
        self.flagged: set[str] = set()

    def handle_photos_upload(self, msg: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(str(msg.get(k, "")) for k in ("title", "description"))
        hits = sorted({w for w in _WORD.findall(text.lower()) if w in self.words})
        spam = len(hits) >= self.threshold
        if spam:
            self.flagged.add(str(msg.get("photo_id")))
            self.logger.warning("photo %s flagged as spam: %s", msg.get("photo_id"), hits)
        return {"photo_id": msg.get("photo_id"), "spam": spam, "hits": hits}

    def handle_something_else(self, msg: Any) -> dict[str, Any]:
        self.logger.info("something else happened: %r", msg)
        return {"flagged": sorted(self.flagged)}
