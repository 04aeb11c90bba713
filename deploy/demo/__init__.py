"""`make demo` (`python -m deploy.demo`, in __main__.py) and the throwaway OpenSSH server on 127.0.0.1 that stands in
for the GPU host (localhost.py: the demo's host, and the tests' and benchmarks')."""
