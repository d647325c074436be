//! Cross-crate integration tests live in `tests/`; this library only compiles the root README's
//! examples as doctests.
#![doc = include_str!("../../README.md")]
