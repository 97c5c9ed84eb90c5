"""Kept at its old path: the near-duplicate report is search/indexing/duplicates.py."""
from search.indexing.duplicates import find_duplicates

__all__ = ["find_duplicates"]
