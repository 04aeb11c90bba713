"""What `fab sweep --status` shows of a queued run (remote_scripts/sweep_queue.py status), from run_state.py's answer.

    s = summary(info)                       # state, epoch, validation, test, cost, launches
    uar = validation_uar(status, metrics)   # the validation UAR that ranks the sweep, never a loss

Standard library only (the host's python3).
"""

import os


def summary(info):
    """What `fab sweep --status` shows of a run: state, epoch, validation, test, cost, and the launches it had."""
    status, metrics, cv = info.get("status") or {}, info.get("metrics") or {}, info.get("cv") or {}
    exits = os.path.join(info["run_dir"], "exits") if info.get("run_dir") else None
    return {"state": "queued" if info["state"] == "none" else info["state"], "training": info["training"],
            "epoch": status.get("epoch"), "epochs": status.get("epochs"),
            "fold": status.get("fold"), "folds": status.get("folds"),
            "validation": validation_uar(status, metrics), "validation_metric": "val_uar", "test": metrics.get("test"),
            "cv_mean": cv.get("mean"), "compute_seconds": status.get("compute_seconds"),
            "price_per_hour": status.get("price_per_hour"), "eta_seconds": status.get("eta_seconds"),
            "seconds_per_epoch": status.get("seconds_per_epoch"), "launch_id": (info.get("launch") or {}).get("launch_id"),
            "launches": len(os.listdir(exits)) if exits and os.path.isdir(exits) else 0}


def validation_uar(status, metrics):
    """The run's validation UAR, whatever train.monitor chose its best model by: the best model's (metrics.json) once
    finished, else the best epoch's when the monitor is val_uar, else the last epoch's."""
    validation = metrics.get("validation") if isinstance(metrics.get("validation"), dict) else {}
    if validation.get("uar") is not None:
        return validation["uar"]
    best = status.get("best") or {}
    return best.get("value") if best.get("metric") == "val_uar" else (status.get("last") or {}).get("val_uar")
