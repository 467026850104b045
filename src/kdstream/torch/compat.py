"""Can this student train on this store? The checks ``distill`` runs before step 0, for anyone's loop."""
from __future__ import annotations


def check_compatible(store, tokenizer, model=None) -> None:
    """Raise KdError (one line: what differs and the fix) unless ``tokenizer`` maps every string to
    the ids the store's teacher used (same vocabulary and special tokens, by fingerprint) and, when
    ``model`` is given, its output layer covers every id the store can list.

    ``store``: a StoreDataset, an open store, or a path/URL (comma-separated: several stores)."""
    from kdstream.distill.sources import check_store_matches

    if isinstance(store, str) or hasattr(store, "__fspath__"):
        from kdstream.storage import open_stores

        store = open_stores(str(store))
    check_store_matches(_Attrs(store), tokenizer, model)


class _Attrs:
    """What check_store_matches reads of a store (attrs, vocab_size), from any of the accepted kinds."""

    def __init__(self, store) -> None:
        self.attrs = dict(store.attrs)
        self.vocab_size = int(self.attrs["vocab_size"])
