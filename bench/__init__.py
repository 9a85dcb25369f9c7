"""Load benchmark of rebreak-idle (run on demand, not part of the test suite).

``python -m bench --n 100 1000 10000 --tls both`` seeds accounts in a throwaway
PostgreSQL, starts the real daemon (``twist rebreak-idle``) against a load IMAP server
(:mod:`bench.loadserver`) and a backend sink (:mod:`bench.sink`) on 127.0.0.1, prints one
JSON line per run, appends it to ``bench/results.jsonl`` and renders the table of
``docs/benchmarks.md`` (:mod:`bench.report`). See ``bench/README.md``.
"""
