"""The indexing collector: keeps a search index of photos as they are uploaded and deleted.

The index is a JSON file (setting `index_path`, default `photo-index.json` in
the worker's directory) mapping photo id to its searchable words. Handlers are
idempotent, as at-least-once delivery requires: indexing a photo twice or
deleting an absent one changes nothing.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from yptask.tasks.base import BaseTask

_WORD = re.compile(r"\w+", re.UNICODE)


class PhotoIndexer(BaseTask):
    """Collects `*.photos.upload` and `*.photos.delete` into a words-per-photo index."""

    def setup(self) -> None:
        self.index_path = str(self.settings.get("index_path", "photo-index.json"))
        try:
            with open(self.index_path, encoding="utf-8") as f:
                self.index: dict[str, list[str]] = json.load(f)
        except FileNotFoundError:
            self.index = {}

    def handle_photos_upload(self, msg: dict[str, Any]) -> dict[str, Any]:
        photo_id = str(msg["photo_id"])
        text = " ".join(str(msg.get(k, "")) for k in ("title", "description"))
        words = sorted({w.lower() for w in _WORD.findall(text)} | set(msg.get("tags", [])))
        self.index[photo_id] = words
        self._save()
        return {"indexed": photo_id, "words": len(words)}

    def handle_photos_delete(self, msg: dict[str, Any]) -> dict[str, Any]:
        photo_id = str(msg["photo_id"])
        removed = self.index.pop(photo_id, None) is not None
        if removed:
            self._save()
        return {"deleted": photo_id, "was_indexed": removed}

    def _save(self) -> None:
        # Write then rename, so a worker killed mid-write never leaves a torn index.
        tmp = f"{self.index_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.index, f)
        os.replace(tmp, self.index_path)
