"""Status: the operator's HTTP status API and page, the page's query and the rows it
shows (read from the supervisor's counts and the sessions' snapshots).

Reads; never drives: must not know about IMAP, SQL, or how a scan is sent. The gauges
read at scrape time live beside the metrics (``rebreak_idle.live_metrics``), since the
supervisor and the scan trigger attach to them.
"""
