"""Runs in object storage (S3 or any S3-compatible store): a checkpoint every epoch, readable
after the host is gone.

    layout.py     where a run lives in storage, and its pointer LATEST (pure data)
    s3.py         Store: boto3 calls as error codes; download_run
    snapshot.py   a consistent view of a run directory while its trainer writes it
    uploader.py   the process beside the trainer that stores a checkpoint every epoch

boto3 is imported only where a store is opened: the layout and the snapshot need nothing but
the standard library.
"""
