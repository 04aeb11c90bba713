"""EC2 for `fab launch`, `fab down` and `fab instances`: one module per cloud operation.

    cloud = session.connect(inv, region)        # boto3 clients for the region, credentials from the usual chain
    host = launch.launch_host(inv, "gpu1", config, say, instance_type="g5.xlarge")   # -> inventory Host
    terminate.down(inv, "gpu1", say)            # terminate; the group and key pair go when unused
    rows = query.instances(cloud)               # what the tool launched in the region

    session.py    boto3 session and clients (launch.region, launch.profile; AWS_ENDPOINT_URL is boto3's own)
    resources.py  AMI (public SSM parameter), key pair, security group, placement group, this machine's address
    launch.py     run_instances over zones and types, as errors.py decides; records the host (deploy.launched)
    errors.py     every EC2 error classified in one place: next zone, next type, quota, or stop
    wait.py       running (a boto3 waiter), then SSH answering (bounded, a progress line)
    terminate.py  terminate and clean up
    query.py      list, uptime, cost so far
    prices.py     the shipped on-demand catalog (prices.json, dated) and the current spot price

Recovery (`fab watch`, another issue) launches a replacement with `launch.launch_host(...)`: a
plain function that returns the new inventory host.
"""
