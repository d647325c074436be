//! lockyard backend lock-file: not yet implemented (see its issue).
