"""What every sharemesh process shares: config, server bootstrap, coordination, errors."""

import os

# sharemesh processes fork only to exec host tools and children (mkfs.xfs, Ganesha,
# services). gRPC's fork handlers exist for children that keep using gRPC, and they
# crashed ours (SIGSEGV between fork and exec), so they are off in every process that
# imports the runtime, before any channel or server initializes gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
