"""EC2's instance metadata service (IMDSv2) for the host agent: what instance this is, spot notices.

    probe_instance(settings, state, now)   # every round: sets state["instance"] and state["metadata_probe"]
    notice = spot_notice(state, url)       # {action, time} or None

Every request is counted in the agent's state (metadata_requests, and the last METADATA_URLS_KEPT
URLs in metadata_urls), so one can see what the agent sent where. metadata_probe says what it does:

    off                 settings' metadata_url is null (inventory `ec2.metadata_url: null` or `off`): nothing is sent
    on                  it asks: once at start, then every metadata_recheck_seconds (hourly once on EC2)
    stopped: WHY        EC2's default address, which the inventory did not name, said "not EC2":
                        connection refused, no route to host, an HTTP answer that is not IMDSv2's
                        token, or METADATA_TRIES timeouts in a row (a link-local address on a machine
                        that is not EC2 usually drops the packet, so no answer is the usual "no");
                        it is never asked again for these settings, also after a restart

A URL the inventory names (metadata_explicit) is never given up: it is asked again every
metadata_recheck_seconds, as a local stand-in may start later. Standard library only.
"""

import errno
import json
import urllib.error
import urllib.request

from run_format import AGENT_DEFAULTS, EC2_METADATA_URL  # the agent's default settings

METADATA_TRIES = 3  # timeouts in a row after which EC2's default address counts as "not EC2"
METADATA_URLS_KEPT = 10  # the last metadata URLs asked, in state.json


def imds(state, url, path, method="GET", headers=None, timeout=1.0):
    """METHOD metadata_url/latest/PATH, counted in `state` (metadata_requests, metadata_urls); None for
    a 404 to a GET (e.g. no spot notice)."""
    full = f"{url.rstrip('/')}/latest/{path}"
    state["metadata_requests"] = state.get("metadata_requests", 0) + 1
    state["metadata_urls"] = ((state.get("metadata_urls") or []) + [full])[-METADATA_URLS_KEPT:]
    request = urllib.request.Request(full, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404 and method == "GET":
            return None
        raise


def imds_token(state, url):
    return imds(state, url, "api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})


def not_ec2(error):
    """What an error of the token request says about "is this EC2?": "no" (connection refused, no
    route to host, an HTTP answer: another service or none), "timeout" (no answer), or "unsure"."""
    if isinstance(error, urllib.error.HTTPError):
        return "no"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no"
    return "timeout" if isinstance(reason, TimeoutError) else "unsure"


def describe(error):
    """"ConnectionRefusedError: [Errno 111] Connection refused" rather than urllib's wrapper around it."""
    reason = error.reason if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError) else error
    return f"{type(reason).__name__}: {reason}"[:200]


def instance_info(state, url):
    """{ec2: True, instance_type, instance_id, spot} where IMDSv2 answers, else {ec2: False, why, answer}
    (`answer`: what not_ec2 says of the token request; "unsure" for a later failure)."""
    try:
        token = imds_token(state, url)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        return {"ec2": False, "why": describe(e), "answer": not_ec2(e)}
    try:
        get = lambda path: imds(state, url, path, headers={"X-aws-ec2-metadata-token": token})  # noqa: E731
        life = get("meta-data/instance-life-cycle") or "on-demand"
        return {"ec2": True, "instance_type": get("meta-data/instance-type"), "instance_id": get("meta-data/instance-id"),
                "spot": life.strip() == "spot"}
    except (OSError, ValueError) as e:
        return {"ec2": False, "why": describe(e), "answer": "unsure"}


def spot_notice(state, url):
    """The spot interruption notice ({action, time}) or None."""
    token = imds_token(state, url)
    text = imds(state, url, "meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token})
    return json.loads(text) if text else None


def probe_instance(settings, state, now):
    """Ask the metadata service what this host is, as the module docstring says; sets state's
    metadata_probe ("off", "on", "stopped: why") and instance."""
    url = settings.get("metadata_url")
    if not url:
        state.update(metadata_probe="off", instance=None, instance_url=None)
        return
    explicit = settings.get("metadata_explicit")
    explicit = url != EC2_METADATA_URL if explicit is None else bool(explicit)
    if state.get("instance_url") != url or state.get("metadata_explicit") != explicit:  # new settings: start again
        state.update(instance_url=url, metadata_explicit=explicit, metadata_probe="on", metadata_unanswered=0,
                     instance=None, instance_checked=0)
    if state.get("metadata_probe", "on") != "on":
        return
    on_ec2 = (state.get("instance") or {}).get("ec2")
    recheck = 3600 if on_ec2 else float(settings.get("metadata_recheck_seconds") or AGENT_DEFAULTS["metadata_recheck_seconds"])
    if not explicit and state.get("metadata_unanswered"):
        recheck = 0  # no clear answer yet: the next round asks again, METADATA_TRIES times in all
    if now - state.get("instance_checked", 0) < recheck:
        return
    info = instance_info(state, url)
    state.update(instance=info, instance_checked=now)
    if info["ec2"] or explicit:
        state["metadata_unanswered"] = 0
        return
    unanswered = state.get("metadata_unanswered", 0) + 1 if info["answer"] != "no" else 0
    state["metadata_unanswered"] = unanswered
    if info["answer"] == "no" or unanswered >= METADATA_TRIES:
        why = f"{unanswered} tries without an answer, the last: {info['why']}" if unanswered >= METADATA_TRIES else info["why"]
        state["metadata_probe"] = f"stopped: not EC2 ({why}; from {url}, which ec2.metadata_url in the inventory can name to keep asking)"
