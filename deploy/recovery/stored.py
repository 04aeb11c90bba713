"""What `fab watch` needs of the run's copy in storage (the storage layer: deploy/storage).

    configured(inv)                          # storage.url is set
    epoch, url = latest(inv, "r1")           # the last stored epoch (LATEST) and the run's address, or (None, None)
    put_recoveries(inv, "r1", [...], say)    # RUN/recoveries.json in storage (`fab runs` shows them)
"""


def configured(inv):
    return bool((getattr(inv, "storage", None) or {}).get("url"))


def latest(inv, run):
    """(last stored epoch, the run's storage address) or (None, None) when storage has no epoch of it."""
    if not configured(inv):
        return None, None
    raise NotImplementedError("storage layer not merged yet")


def put_recoveries(inv, run, recoveries, say):
    if not configured(inv):
        return
    raise NotImplementedError("storage layer not merged yet")
