"""PostgreSQL: everything the daemon reads and writes there (CONTRACT §3).

``connect``
    one txpostgres connection that closes itself quietly, opening it with a deadline,
    statement deadlines, telling a dead connection from a failed statement
``pool``
    the small self-healing pool of single autocommit statements
``store``
    ``AccountStore``: a service of the daemon that reads the active rows and writes the
    status columns in batches (``writes``: the bounded buffers), and LISTEN (``listener``)
``leases``
    ``LeaseKeeper``: replica leases in the daemon's own tables
``migrate``
    applying ``sql/`` before the reactor runs
"""
