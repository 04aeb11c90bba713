"""`fab fetch-results` reads run storage (moto's S3) when the host answers but cannot tell about the run."""

import pytest

from tests.support.storage_check import client, new_bucket, seed_run


@pytest.mark.ssh
def test_fetch_results_reads_storage_when_the_host_answers_but_cannot_tell_about_the_run(deploy_env, moto_server):
    """A real sshd host without the code synced: `fetch-results --run` says why and reads the run from storage."""
    env = deploy_env
    bucket = new_bucket(moto_server)
    seed_run(client(moto_server), bucket, "team/", "r1", state="finished", final=True)
    env.write(storage={"url": f"s3://{bucket}/team", "endpoint_url": moto_server})
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.env.pop(key, None)
    env.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                   AWS_CONFIG_FILE=str(env.root / "no aws config"), AWS_EC2_METADATA_DISABLED="true")
    fetched = env.fab("-H", "local", "fetch-results", "--run", "r1", "--dest", env.root / "results")
    assert fetched.returncode == 0, fetched.out
    assert "cannot tell about run r1" in fetched.out and "reading it from storage instead" in fetched.out, fetched.out
    assert (env.root / "results" / "gpu1" / "r1" / "history.csv").read_text().startswith("epoch,loss")
