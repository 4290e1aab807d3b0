# Sourced by scripts/dev-ceph and scripts/dev-gluster: the storage address of a
# development cluster, derived from its DIR.
#
# A cluster bound to 127.0.0.1 is out of reach of the mesh's gateways: each runs in a
# network namespace with a loopback of its own. So the cluster binds a link-local /32 on
# a veth pair of its own in the root namespace (this kernel has no `dummy` module), in
# 169.254.128.0/17, beside the gateways' storage legs (169.254.64.0/18). A gateway
# routes to it through its leg; the host delivers to it as to any of its own addresses.
# Clients learn the address from the cluster itself (monmap, brick hosts), so daemons
# bind it too. No route or forwarding is added on the host.

# Sets dev_ifname and dev_address from DIR ($1).
dev_address_of() {
  local h n
  h=$(printf '%s' "$1" | sha1sum)
  dev_ifname="smd${h:0:10}"
  n=$((16#${h:10:4} % 32512))  # 128 × 254 addresses
  dev_address="169.254.$((128 + n / 254)).$((1 + n % 254))"
}

# Idempotent: the pair, the address on one end, both ends up.
dev_address_up() {
  ip link show dev "$dev_ifname" >/dev/null 2>&1 ||
    ip link add "$dev_ifname" type veth peer name "${dev_ifname}p"
  ip addr replace "$dev_address/32" dev "$dev_ifname"
  ip link set dev "${dev_ifname}p" up
  ip link set dev "$dev_ifname" up
}

# Deleting one end deletes the pair, and the address with it.
dev_address_down() {
  ip link del dev "$dev_ifname" 2>/dev/null || true
}
