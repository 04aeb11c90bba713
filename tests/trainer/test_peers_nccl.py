"""NCCL's errors of a lost peer (TensorFlow's error classes) are peer-lost on a cluster only."""

import pytest


@pytest.mark.tf
def test_nccl_errors_of_a_lost_peer_are_peer_lost_on_a_cluster_only():
    """On GPUs a lost peer raises NCCL's InternalError or UnknownError: with several workers that is a lost peer, not exit 1."""
    tf = pytest.importorskip("tensorflow")
    from trainer.training.peers import lost_peer

    nccl = tf.errors.InternalError(None, None, "NCCL failure: remote process exited or there was a network error")
    unknown = tf.errors.UnknownError(None, None, "ncclRemoteError: A call failed possibly due to a network error")
    assert lost_peer(nccl, workers=2) and lost_peer(unknown, workers=2)
    assert not lost_peer(nccl, workers=1) and not lost_peer(unknown, workers=1)  # one host: a failure of its own (exit 1)
    assert lost_peer(tf.errors.UnavailableError(None, None, "socket closed"), workers=2)
    assert not lost_peer(tf.errors.InvalidArgumentError(None, None, "bad shape"), workers=2)
    assert not lost_peer(ValueError("not TensorFlow's"), workers=2)
