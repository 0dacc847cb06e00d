# OpenBao server configuration for the parent stack (server mode, not -dev).
# Mounted at /openbao/config/config.hcl; data lives in the openbao-data volume.
# First start: initialise and unseal (README, "OpenBao"). It starts sealed after every restart.

ui            = false
disable_mlock = true # recommended with integrated storage; no IPC_LOCK capability needed

storage "raft" {
  path    = "/openbao/file"
  node_id = "powernode-openbao-1"
}

# Reachable only on the compose network (no published port), so plain HTTP stays inside the
# host. Publish it only behind TLS: set tls_cert_file / tls_key_file and drop tls_disable.
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"
