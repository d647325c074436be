//! lock-mem (in progress).
