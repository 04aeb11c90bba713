"""Results: scores, tables, pictures and the monitor screen of a run, and what a run folder may hold."""
