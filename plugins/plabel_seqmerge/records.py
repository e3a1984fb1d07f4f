"""What a ``seqmerge`` run did, per image and per sequence, kept on disk as it goes so that
the label set's summary covers every image: a run that was killed and resumed, or the ranks
of a ``torchrun``, each label only part of the images."""
from __future__ import annotations

import json
from pathlib import Path


class Records:
    """Keyed JSON records appended to ``<folder>/records.rank<r>.jsonl`` as they are made.

    A later line replaces an earlier one with the same key (a resumed run relabels the
    images a killed one had not finished); a torn last line, left by a killed process, is
    skipped. :meth:`all` reads every rank's file, so rank 0 summarises the whole set."""

    def __init__(self):
        self._items: dict[str, dict] = {}
        self._folder: Path | None = None
        self._handle = None

    def open(self, folder: Path, rank: int) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._items = self._read()
        self._handle = open(self._folder / f"records.rank{rank}.jsonl", "a", encoding="utf-8")

    def put(self, key: str, record: dict) -> None:
        if self._items.get(key) == record:
            return
        self._items[key] = record
        if self._handle is not None:
            self._handle.write(json.dumps({"key": key, "record": record}, sort_keys=True) + "\n")
            self._handle.flush()

    def get(self, key: str) -> dict | None:
        return self._items.get(key)

    def all(self) -> dict[str, dict]:
        """Every record: this process's and, re-read from disk, every rank's."""
        return {**self._read(), **self._items}

    def _read(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        if self._folder is None:
            return found
        for path in sorted(self._folder.glob("records.rank*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    found[entry["key"]] = entry["record"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a killed process
        return found

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
