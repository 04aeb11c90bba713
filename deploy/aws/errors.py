"""Every EC2 error, classified in one place, and the failover of a launch that it decides.

    plan = Failover(attempts, region)       # attempts: [Attempt(type, zone, market)], in the order to try
    for attempt in plan:                    # skips what an earlier error ruled out
        try: ...run_instances...
        except ClientError as e: plan.failed(attempt, e)    # next zone, next type, or raises
    raise plan.exhausted()                  # NoCapacity: what was tried, what to do (the quota to raise)

    raise explain(e)                        # any other boto3 error as a DeployError that says what to do

Capacity errors (this zone has no such machine now) try the next zone; quota errors (the account
may not run more of this family in this market) skip every other zone and type of that quota;
anything else stops at once: retrying elsewhere would not help.
"""

from dataclasses import dataclass

from deploy.errors import DeployError, LocalInputError

ZONE = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity", "InsufficientCapacity",
        "InsufficientFreeAddressesInSubnet", "Unsupported", "SpotMaxPriceTooLow", "InsufficientCapacityOnHost"}
QUOTA = {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded", "MaxSpotFleetRequestCountExceeded",
         "PendingVerification"}
# The Service Quotas that cap GPU instances: (family, market) -> (name, code), in the console under "Amazon EC2"
QUOTAS = {
    ("G", "on-demand"): ("Running On-Demand G and VT instances", "L-DB2E81BA"),
    ("G", "spot"): ("All G and VT Spot Instance Requests", "L-3819A6DF"),
    ("P", "on-demand"): ("Running On-Demand P instances", "L-417A185B"),
    ("P", "spot"): ("All P Spot Instance Requests", "L-7212CCBC"),
    ("Standard", "on-demand"): ("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", "L-1216C47A"),
    ("Standard", "spot"): ("All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", "L-34B43A08"),
}


class NoCapacity(DeployError):
    """No zone and no type tried could launch (capacity or quota): nothing runs, nothing is billed."""

    exit_code = 9


@dataclass(frozen=True)
class Attempt:
    instance_type: str
    zone: str
    market: str  # "spot" or "on-demand"

    def __str__(self):
        return f"{self.instance_type} {self.market} in {self.zone}"


def family(instance_type):
    """The quota family of an instance type: G (g*, vt*), P (p*), else Standard (what GPU users meet)."""
    prefix = instance_type.split(".")[0].lower()
    if prefix.startswith(("g", "vt")):
        return "G"
    if prefix.startswith("p"):
        return "P"
    return "Standard"


def aws_errors():
    """What boto3 raises: `except aws_errors() as e: raise explain(e, "doing X")`."""
    import botocore.exceptions as bx

    return (bx.ClientError, bx.BotoCoreError)


def code_of(error):
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


def classify(error):
    """'zone' (try the next zone), 'quota' (skip this quota's family and market), or 'stop'."""
    code = code_of(error)
    if code in ZONE:
        return "zone"
    if code in QUOTA:
        return "quota"
    return "stop"


class Failover:
    def __init__(self, attempts, region):
        self.attempts, self.region = list(attempts), region
        self.tried = []  # (attempt, code, message)
        self.ruled_out = set()  # (family, market) whose quota is reached
        self.skipped = []  # (what, why) never offered

    def __iter__(self):
        for attempt in self.attempts:
            if (family(attempt.instance_type), attempt.market) not in self.ruled_out:
                yield attempt

    def failed(self, attempt, error):
        """Record `error` of `attempt`; raise at once unless another attempt may succeed."""
        kind = classify(error)
        message = getattr(error, "response", {}).get("Error", {}).get("Message", str(error))
        if kind == "stop":
            raise explain(error, f"launching {attempt}") from None
        self.tried.append((attempt, code_of(error), message))
        if kind == "quota":
            self.ruled_out.add((family(attempt.instance_type), attempt.market))

    def not_offered(self, instance_type, why):
        self.skipped.append((instance_type, why))

    def exhausted(self):
        lines = [f"Could not launch in {self.region}: every zone and type tried was refused; nothing was launched."]
        lines += [f"  {attempt}: {code} ({message})" for attempt, code, message in self.tried]
        lines += [f"  {what}: {why}" for what, why in self.skipped]
        todo = []
        for fam, market in sorted(self.ruled_out):
            name, code = QUOTAS.get((fam, market), (f"the {fam} {market} instance quota", "?"))
            todo.append(f"raise the quota \"{name}\" ({code}) in {self.region}: AWS console, Service Quotas, Amazon EC2 "
                        f"(it counts vCPUs; a new account often has 0)")
        if any(code in ZONE for _, code, _ in self.tried):
            todo.append("capacity comes and goes: try again later, another --region, --spot (or without it), or more types "
                        "in launch.alternatives")
        if not self.tried and not todo:
            todo.append("no zone of the region offers these types: try another --region or type")
        return NoCapacity("\n".join(lines + ["What to do: " + "; ".join(todo) + "."]))


def explain(error, doing="calling EC2"):
    """A boto3/botocore exception as a DeployError that says what to do (credentials, permissions, region)."""
    import botocore.exceptions as bx

    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return LocalInputError(f"No AWS credentials for {doing}: run `aws configure` (or `aws sso login`), or set launch.profile "
                               "in the inventory, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (docs/ec2.md).")
    if isinstance(error, bx.ProfileNotFound):
        return LocalInputError(f"{error}: set launch.profile to a profile of ~/.aws/config.")
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return DeployError(f"Cannot reach AWS while {doing}: {error}. Check the network (and launch.region).")
    code = code_of(error)
    message = getattr(error, "response", {}).get("Error", {}).get("Message", str(error))
    if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
        return LocalInputError(f"AWS refused {doing}: {code}: {message[:300]}. The IAM user or role needs the permissions of the "
                               "policy in docs/ec2.md (IAM permissions).")
    if code in ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
                "RequestExpired"):
        return LocalInputError(f"AWS did not accept the credentials while {doing}: {code}: {message[:300]}. Renew them "
                               "(`aws sso login`, `aws configure`).")
    if code == "OptInRequired":
        return LocalInputError(f"AWS: {message[:300]} (the region must be enabled for the account).")
    return DeployError(f"EC2 refused {doing}: {code or type(error).__name__}: {message[:500]}")
