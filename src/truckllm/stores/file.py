"""The ``file`` store: the memory store's tables, persisted so they survive restarts.

Two files: a snapshot (``path``) and an append-only journal beside it (``path.journal``). Every
batch the gateway flushes (each ``flush_interval``, 1 s by default) is appended to the journal as
one record, ``magic | length | CRC-32 | journal sequence | JSON payload``, and fsync'ed before the
flush counts as done; so a ``kill -9`` or a power cut loses at most the usage of the last flush
interval. On start the snapshot is read and the journal replayed from the first record the
snapshot does not already hold; a torn or corrupt tail (a write cut off mid-record) fails its
length or checksum, is dropped and cut from the file. When the journal passes ``compact_bytes``
(and on a clean shutdown) the tables are written to a temporary file, fsync'ed, renamed over the
snapshot (atomic) and the directory fsync'ed; only then is the journal emptied. A crash between
the rename and the truncation is harmless: the snapshot names the last journal record it holds.

One process per file: a second process that opens it gets an error (an advisory ``flock``).

The key-value table (``kv_*``) lives in a third file, ``path.kv``: an append-only log of sets and
deletes (``magic | op | key length | value length | expiry | CRC-32 | key | value``), written
through the page cache without fsync (conversation state, not money), replayed on start up to the
first torn record, and rewritten with only the live entries once it holds mostly dead ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from truckllm.stores.base import (
    Adjust,
    Ask,
    Batch,
    Grant,
    StoreError,
    UsageQuery,
    UsageResult,
    View,
)
from truckllm.stores.kv import DEFAULT_MAX_BYTES, KVTable
from truckllm.stores.tables import Tables, batch_from_json, batch_to_json

log = logging.getLogger("truckllm.stores")

_MAGIC = b"TLJ1"
_HEADER = struct.Struct(">4sIIQ")  # magic, payload length, CRC-32 of the payload, journal seq
_MAX_RECORD = 256 * 1024 * 1024
_KV_MAGIC = b"TLK1"
_KV_HEADER = struct.Struct(
    ">4sBIIdI"
)  # magic, op (1 set, 0 delete), key len, value len, until, crc


class FileStore:
    shared = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        compact_bytes: int = 8 * 1024 * 1024,
        kv_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.path = Path(path)
        self.journal_path = Path(str(self.path) + ".journal")
        self.compact_bytes = compact_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(str(self.path) + ".lock", "a+b")  # noqa: SIM115 - held for the store's life
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise StoreError(f"{self.path} is in use by another process") from exc
        self.tables, self._jseq = self._recover()
        self._journal = open(self.journal_path, "ab")  # noqa: SIM115
        self.kv_path = Path(str(self.path) + ".kv")
        self.kv = KVTable(kv_max_bytes)
        self._kv_log_bytes = self._kv_recover()
        self._kv_log: BinaryIO | None = None  # opened at the first write
        self._error: str | None = None
        self._io = asyncio.Lock()

    @classmethod
    def from_config(cls, config: Any) -> FileStore:
        if not config.path:
            raise StoreError("storage.runtime.path is required for the file store")
        return cls(config.path, kv_max_bytes=getattr(config, "kv_max_bytes", DEFAULT_MAX_BYTES))

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self) -> tuple[Tables, int]:
        jseq = 0
        tables = Tables()
        if self.path.exists():
            try:
                data = orjson.loads(self.path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise StoreError(f"cannot read the snapshot {self.path}: {exc}") from exc
            tables = Tables.load(data["tables"])
            jseq = int(data["journal_seq"])
        good = 0
        replayed = 0
        if self.journal_path.exists():
            raw = self.journal_path.read_bytes()
            at = 0
            while at + _HEADER.size <= len(raw):
                magic, length, crc, seq = _HEADER.unpack_from(raw, at)
                end = at + _HEADER.size + length
                if magic != _MAGIC or length > _MAX_RECORD or end > len(raw):
                    break
                payload = raw[at + _HEADER.size : end]
                if zlib.crc32(payload) != crc:
                    break
                if seq > jseq:
                    tables.apply(batch_from_json(orjson.loads(payload)))
                    jseq = seq
                    replayed += 1
                at = good = end
            if good < len(raw):
                log.warning(
                    "file store: dropping a torn journal tail",
                    extra={"path": str(self.journal_path), "bytes": len(raw) - good},
                )
                with open(self.journal_path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
        if replayed:
            log.info("file store: replayed %d journal records", replayed)
        return tables, jseq

    # -- the Store protocol -------------------------------------------------------------------

    async def sync(self, batch: Batch) -> View:
        if self.tables.applied.get(batch.origin, -1) < batch.seq and not batch.empty:
            payload = orjson.dumps(batch_to_json(batch))
            async with self._io:
                try:
                    await asyncio.to_thread(self._append, payload, self._jseq + 1)
                except OSError as exc:
                    self._error = f"cannot write {self.journal_path}: {exc.strerror or exc}"
                    raise StoreError(self._error) from exc
                self._jseq += 1
                self._error = None
        self.tables.apply(batch)
        if self._journal.tell() > self.compact_bytes:
            await self.compact()
        return self.tables.view(batch.now)

    def _append(self, payload: bytes, seq: int) -> None:
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload), seq) + payload
        self._journal.write(record)
        self._journal.flush()
        os.fsync(self._journal.fileno())

    async def compact(self) -> None:
        """Fold the journal into a new snapshot, written crash-safely, then empty the journal."""
        async with self._io:
            data = orjson.dumps({"journal_seq": self._jseq, "tables": self.tables.dump()})
            await asyncio.to_thread(self._write_snapshot, data)

    def _write_snapshot(self, data: bytes) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._journal.truncate(0)
        self._journal.seek(0)
        os.fsync(self._journal.fileno())

    async def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]
    ) -> list[Grant]:
        return self.tables.lease(scope, asks, adjusts, int(time.time() * 1000))

    async def query(self, q: UsageQuery) -> UsageResult:
        return self.tables.query(q, time.time())

    def health(self) -> tuple[bool, str | None]:
        return self._error is None, self._error

    async def close(self) -> None:
        if self._journal.closed:
            return
        with contextlib.suppress(OSError):
            await self.compact()
        if self._kv_log is not None:
            with contextlib.suppress(OSError):
                self._kv_rewrite()
        self._journal.close()
        if self._kv_log is not None:
            self._kv_log.close()
        self._lock.close()

    # -- the key-value table ------------------------------------------------------------------

    async def kv_get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        until = time.time() + ttl_s
        if self.kv.set(key, value, ttl_s, until):
            self._kv_append(1, key, value, until)

    async def kv_delete(self, key: str) -> bool:
        found = self.kv.delete(key)
        if found:
            self._kv_append(0, key, b"", 0.0)
        return found

    def _kv_append(self, op: int, key: str, value: bytes, until: float) -> None:
        k = key.encode()
        record = _KV_HEADER.pack(_KV_MAGIC, op, len(k), len(value), until, zlib.crc32(k + value))
        try:
            if self._kv_log is None:
                self._kv_log = open(self.kv_path, "ab")  # noqa: SIM115
            self._kv_log.write(record + k + value)
            self._kv_log.flush()
        except OSError as exc:
            self._error = f"cannot write {self.kv_path}: {exc.strerror or exc}"
            raise StoreError(self._error) from exc
        self._kv_log_bytes += len(record) + len(k) + len(value)
        if self._kv_log_bytes > 2 * self.kv.size + 1024 * 1024:
            self._kv_rewrite()

    def _kv_recover(self) -> int:
        """Replay ``path.kv`` into the table; its valid length (a torn tail is cut off)."""
        if not self.kv_path.exists():
            return 0
        raw = self.kv_path.read_bytes()
        at = good = 0
        while at + _KV_HEADER.size <= len(raw):
            magic, op, klen, vlen, until, crc = _KV_HEADER.unpack_from(raw, at)
            start = at + _KV_HEADER.size
            end = start + klen + vlen
            if magic != _KV_MAGIC or end > len(raw) or zlib.crc32(raw[start:end]) != crc:
                break
            key = raw[start : start + klen].decode("utf-8", "replace")
            if op == 1:
                self.kv.set(key, raw[start + klen : end], 0.0, until)
            else:
                self.kv.delete(key)
            at = good = end
        if good < len(raw):
            with open(self.kv_path, "r+b") as f:
                f.truncate(good)
        return good

    def _kv_rewrite(self) -> None:
        """The log with only the live entries, swapped in atomically."""
        tmp = self.kv_path.with_name(self.kv_path.name + ".tmp")
        size = 0
        with open(tmp, "wb") as f:
            for key, value, until in self.kv.items():
                k = key.encode()
                head = _KV_HEADER.pack(
                    _KV_MAGIC, 1, len(k), len(value), until, zlib.crc32(k + value)
                )
                f.write(head + k + value)
                size += len(head) + len(k) + len(value)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.kv_path)
        if self._kv_log is not None:
            self._kv_log.close()
            self._kv_log = None
        self._kv_log_bytes = size
