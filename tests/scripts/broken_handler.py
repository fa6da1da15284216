"""A handler module that cannot be imported: the worker tests' crash at import."""

raise RuntimeError("broken on purpose, at import")
