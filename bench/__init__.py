"""Performance benchmarks of DESIGN §8: `python -m bench [name ...]` (`make bench`).

Every benchmark starts the processes it needs (real hubs on the embedded default, uvicorn, wrk)
in `.bench/<name>/` and stops them, by pid, before the next one starts.
"""
