//! The job policy (work in progress).
