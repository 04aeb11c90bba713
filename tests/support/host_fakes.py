"""Stand-ins for what a test host lacks: crontab, the EC2 instance metadata service (IMDSv2), and a look at
a process group from /proc."""

import json
import os
from http.server import BaseHTTPRequestHandler

FAKE_CRONTAB = """#!/bin/sh
# crontab -l / crontab - with the table in a file beside this script
table="$(dirname "$0")/crontab.txt"
case "$1" in
  -l) if [ -f "$table" ]; then cat "$table"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > "$table" ;;
  *) exit 2 ;;
esac
"""


class MetadataService(BaseHTTPRequestHandler):
    """IMDSv2 as EC2 serves it: PUT a token, then GETs that carry it; 401 without it."""

    token = "imds-token-1234"
    notice = None  # the spot/instance-action document once the instance is to be reclaimed
    answers = {"meta-data/instance-type": "g5.xlarge", "meta-data/instance-life-cycle": "spot", "meta-data/instance-id": "i-0123"}

    def do_PUT(self):
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(400, "")
        self.reply(200, self.token)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            return self.reply(401, "")
        path = self.path.removeprefix("/latest/")
        if path == "meta-data/spot/instance-action":
            return self.reply(200, json.dumps(self.notice)) if self.notice else self.reply(404, "Not Found")
        self.reply(200, self.answers[path]) if path in self.answers else self.reply(404, "Not Found")

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def group_alive(pgid):
    """PIDs of the live (not zombie) processes of process group `pgid`, from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found

