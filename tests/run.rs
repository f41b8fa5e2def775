//! `handles run`: the supervisor, the job and the bad-handle policy.

mod common;
