"""``make demo``: the whole loop on embedded parts (see demo/__main__.py)."""
