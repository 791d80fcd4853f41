"""Leak detection against the private data (see :mod:`.records` for the rules)."""

from remote_kernel.checks.leaks.records import PrivateIndex, html_to_text, item_texts, unwrap_pandas

__all__ = ["PrivateIndex", "html_to_text", "item_texts", "unwrap_pandas"]
