"""What `fab watch` sees of a run, and how it says it.

    seen = look(target, hinv, "r1")        # {"reachable", "info", "error"}: run_state.py's JSON, as `fab monitor`
    progress(seen["info"])                 # "epoch 3/10   val_uar 0.61   ..." for the watch's line per change
    poweroff_phrase(agent, ended_at)       # when and why the host powers off, as its agent said after the end
    finished_summary(metrics)              # "test UAR 0.712 [0.690, 0.731], cost $1.20 (0.80 h)": the `finished` text
"""

from deploy.host import training


def look(target, inv, run):
    """One look at the run: {"reachable", "info", "error"}; never raises (an error is the host not answering)."""
    try:
        info = training.run_state(target.conn, inv, run=run, log_lines=0, quick=True)
        return {"reachable": True, "info": info, "error": None}
    except Exception as e:  # noqa: BLE001 - unreachable, refused, no code there: all "does not answer" for the clock
        try:
            target.conn.close()  # a fresh connection next round
        except Exception:  # noqa: BLE001, S110
            pass
        return {"reachable": False, "info": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}


def progress(info):
    status = info.get("status") or {}
    last = status.get("last") or {}
    metric = "   ".join(f"{k} {last[k]:.4g}" for k in ("val_uar", "val_loss") if isinstance(last.get(k), (int, float)))
    stored = ((info.get("storage") or {}).get("stored") or {}).get("epoch")
    behind = status.get("epoch", 0) - stored if isinstance(stored, int) and isinstance(status.get("epoch"), int) else None
    storage = f"   storage {behind} epochs behind (stored: epoch {stored})" if behind and behind > 1 else ""
    return f"epoch {status.get('epoch', 0)}/{status.get('epochs', '?')}" + (f"   {metric}" if metric else "") + storage


def poweroff_phrase(agent, ended_at):
    """When and why the host powers off, as its agent said in its first round after the run ended (remote_scripts/
    agent_events.poweroff_plan: the agent's own `finished` notification says the same); None while it has not said."""
    said = (agent or {}).get("poweroff") or {}
    polled = (agent or {}).get("polled_at")
    if not said.get("text") or not polled or not ended_at or str(polled) <= str(ended_at):  # a round begun after the end
        return None
    return said["text"]


def finished_summary(metrics):
    from trainer.results.report import headline

    try:
        name, m = headline(metrics)
        ci = (m.get("ci95") or {}).get("uar")
        parts = [f"{name} UAR {m['uar']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        parts = []
    compute = metrics.get("compute") or {}
    if isinstance(compute.get("cost_usd"), (int, float)):
        parts.append(f"cost ${compute['cost_usd']:.2f} ({compute.get('hours', 0):.2f} h)")
    return ", ".join(parts)
