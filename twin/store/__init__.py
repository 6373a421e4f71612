"""Store backends behind one interface (:class:`twin.store.base.Store`)."""

from twin.store.base import Bucket, Store, StoredSample, open_store

__all__ = ["Bucket", "Store", "StoredSample", "open_store"]
