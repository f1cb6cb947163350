"""The benchmark scripts run end to end on tiny grids (smoke tests, no timing asserted)."""
