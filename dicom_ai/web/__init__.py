"""The node's web pages (radiologist worklist, study viewer, admin), REST API and /metrics."""
