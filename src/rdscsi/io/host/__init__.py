"""Node-host IO: what the node plugin does to its own machine (NVMe/TCP sessions, loop
devices, mounts, filesystems, subprocesses). Peers: `io.rds` (the appliance), `io.kube`
(the cluster)."""
