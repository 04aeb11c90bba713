"""Training: the model, the one training loop, devices and hosts, callbacks, runs, CV and the smoke test."""
