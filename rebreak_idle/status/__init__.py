"""Status: the operator's HTTP status API and page, the page's query and rows, and the
gauges read at scrape time for /metrics.

Reads the sessions' snapshots and counts; must not know about IMAP, SQL, or how a scan is
sent.
"""
