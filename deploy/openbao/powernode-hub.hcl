# The OpenBao policy of the hub's token: KV v2 at secret/ (VAULT_KV_MOUNT), only its own paths.
#   cluster_member_pg_replica/<peer_id>  replication passwords (written, read once, deleted on revoke)
#   powernode/federation_ca              the federation CA key and certificate

path "secret/data/cluster_member_pg_replica/*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "secret/metadata/cluster_member_pg_replica/*" {
  capabilities = ["read", "list", "delete"]
}

path "secret/data/powernode/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/powernode/*" {
  capabilities = ["read", "list"]
}

