//! The seccomp prefilter (work in progress).
