"""One stage's results, resumable: a jsonl file of ``{"key", "status", "reason", "data"}`` records.

``key`` is a hash of the item's content (and of the settings that shape its result), so a rerun
skips what is done whatever order items come in. Each record is appended and fsync'd before the
stage moves on; a line torn by a kill mid-write is ignored on load (its item is redone), and a key
seen twice keeps its first record, so nothing is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("longrl.datagen")


def content_key(*parts) -> str:
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class StageStore:
    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        torn = 0
        if path.exists():
            with path.open("rb") as f:
                raw = f.read()
            lines = raw.split(b"\n")
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records.setdefault(record["key"], record)
                except (json.JSONDecodeError, KeyError, TypeError):
                    torn += 1
                    log.warning(
                        "%s line %d is not a complete record (a run stopped mid-write); its item is redone",
                        path,
                        number,
                    )
            if raw and not raw.endswith(b"\n"):  # finish the torn line so the next append starts clean
                with path.open("ab") as f:
                    f.write(b"\n")
        self.torn = torn

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, key: str, status: str, data: dict | None = None, reason: str = "") -> None:
        record = {"key": key, "status": status, "reason": reason, "data": data or {}}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if key in self.records:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[key] = record

    def kept(self, key: str) -> dict | None:
        record = self.records.get(key)
        return record["data"] if record and record["status"] == "kept" else None
