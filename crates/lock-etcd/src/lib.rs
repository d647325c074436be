//! lockyard backend lock-etcd: not yet implemented (see its issue).
