"""The lip-sync service apart from BentoML: request checks, the job queue, the HTTP app, metrics and
process housekeeping (serving/service.py hosts them)."""
