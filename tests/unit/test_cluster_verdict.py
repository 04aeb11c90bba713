"""The cluster's verdict names the worker that failed first from each worker's own record: a worker
whose own NCCL collective failed is that worker's failure, not a lost peer, so the verdict does not blame worker 0."""

import json

import pytest

from deploy.host.cluster import cluster_verdict
from trainer.config import DEFAULTS, dump_config
from trainer.errors import PeerLost


def failed(error):
    return {"state": "failed", "exit_code": 4, "status": {"error": error}}


def peer_lost(cause, local):
    return failed({"type": "PeerLost", "message": f"worker lost contact with its peers ({cause})", "cause": cause, "local": local})


def test_the_worker_whose_own_collective_failed_is_named_not_worker_0():
    line, code = cluster_verdict([peer_lost("UnavailableError", False), peer_lost("InternalError", True)])
    assert code == 4
    assert line.startswith("cluster FAILED: worker 1 failed first (PeerLost on InternalError, a failure of its own collective"), line
    assert line.endswith("worker 0 stopped on losing it (PeerLost)"), line


def test_where_the_records_cannot_tell_the_verdict_says_so_instead_of_picking_worker_0():
    for infos in ([peer_lost("UnavailableError", False), peer_lost("UnavailableError", False)],
                  [peer_lost("InternalError", True), peer_lost("InternalError", True)],
                  [peer_lost("timeout", False), {"state": "stalled", "exit_code": 0}]):
        line, _ = cluster_verdict(infos)
        assert "cannot be told" in line and "worker 0 failed first" not in line and "worker 1 failed first" not in line, line
    line, _ = cluster_verdict([peer_lost("UnavailableError", False), failed({"type": "DataError", "message": "bad clip"})])
    assert line.startswith("cluster FAILED: worker 1 failed first (DataError: bad clip)"), line  # an error of its own comes first


def test_a_peer_lost_status_record_keeps_the_error_the_worker_saw(tmp_path, monkeypatch):
    from trainer.training import run

    (tmp_path / "config.yaml").write_text(dump_config(DEFAULTS))

    def lost(*args, **kwargs):
        raise PeerLost("worker 1 lost contact with its peers (InternalError)", cause="InternalError", local=True)

    monkeypatch.setattr(run, "_train", lost)
    with pytest.raises(PeerLost):
        run.execute(tmp_path, data_dirs=["unused"])
    error = json.loads((tmp_path / "status.json").read_text())["error"]
    assert error == {"type": "PeerLost", "message": "worker 1 lost contact with its peers (InternalError)",
                     "cause": "InternalError", "local": True}
