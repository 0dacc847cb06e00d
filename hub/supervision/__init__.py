"""Process supervision: `powernode-hub serve` and `worker`.

One home for what keeps a hub process running: the embedded PostgreSQL and Redis it starts, the API
and federation TLS listeners, the arq workers, and how they are started, watched and stopped.
The child-side bootstrap (`hub.federation.bootstrap`) depends on this package (it reads the
announcement that `serve` writes); nothing here imports it: `hub.cli` hands `serve` the start-up
duties it runs."""
