"""The Zarr logit store: schema, writer, reader. See docs/store-format.md for the on-disk spec."""
from kdstream.storage.reader import LogitStore, open_store
from kdstream.storage.schema import FORMAT_NAME, FORMAT_VERSION
from kdstream.storage.union import StoreUnion, open_stores
from kdstream.storage.writer import StoreWriter

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "LogitStore", "StoreUnion", "StoreWriter", "open_store", "open_stores"]
