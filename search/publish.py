"""Kept at its old path: publishing an index's vectors to Milvus is search/indexing/publish.py (the
command is `python -m search.index publish`)."""
from search.indexing.publish import PublishError, key_value, publish, register, run

__all__ = ["PublishError", "key_value", "publish", "register", "run"]
