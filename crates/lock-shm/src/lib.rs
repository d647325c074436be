//! lockyard backend lock-shm: not yet implemented (see its issue).
