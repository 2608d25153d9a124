"""Ops views: what an operator reads (audit, stock, records), Prometheus metrics, live
figures, the dashboard and `onestock top`. Above state/, below the CLI and the HTTP app."""
