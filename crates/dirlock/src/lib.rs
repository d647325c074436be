//! lockyard backend dirlock: not yet implemented (see its issue).
