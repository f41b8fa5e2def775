//! `handles <pid>`: tables of live processes, checked against /proc and lsof.

mod common;
