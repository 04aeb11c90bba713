"""What the laptop knows of runs beyond what a host says: which were fetched and is the host idle (ledger.py),
and run storage, read with the laptop's own credentials (storage.py)."""
