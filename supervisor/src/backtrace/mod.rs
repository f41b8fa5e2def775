//! Remote unwinding and symbolization (work in progress).
