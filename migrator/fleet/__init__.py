"""Fleet campaigns: many tenants migrated in waves, inside their own windows, under caps, on Temporal.

Temporal orders *tenants* (the campaign: waves, windows, caps, host failover); the runner orders *steps* inside
one tenant, exactly as for ``migrator run``. :mod:`~migrator.fleet.campaign` loads and validates a campaign file,
:mod:`~migrator.fleet.schedule` assigns waves and forecasts the schedule (``fleet plan``),
:mod:`~migrator.fleet.workflows` holds the deterministic workflow code and :mod:`~migrator.fleet.activities` the
side effects (one tenant's run driven through :class:`~migrator.runner.Runner`).
"""
