"""The scheduler: places an app's containers on hosts, keeps them running and routed.

`placement` and `planner` are pure (no Django, no I/O); `tasks` and `ingest` are the thin
Django/Celery layer that loads rows, applies plans and reads the agents' reports.
"""
