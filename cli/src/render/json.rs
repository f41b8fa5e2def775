//! JSON output. The schema is documented in docs/json.md and versioned by
//! the top-level `schema` field; fields are only ever added within a version.
//!
//! The document is serialized straight from the snapshots (no intermediate
//! `serde_json::Value` per handle): at 20,000 fds that tree cost most of the
//! run and ~9 KiB per fd.

use handles_supervisor::inspect::mappings::Mapped;
use handles_supervisor::inspect::{HandleInfo, Snapshot, Source};
use serde::Serialize;

pub const SCHEMA: &str = "handles.table.v2";

#[derive(Serialize)]
pub struct ProcessOut<'a> {
    pid: i32,
    name: &'a str,
    koid: Option<u64>,
    source: Source,
    mixer: u32,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    table_error: Option<&'a str>,
    handle_count: usize,
    object_count: usize,
    handles: Vec<&'a HandleInfo>,
    /// With --mappings: objects held only through memory mappings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings: Option<Vec<Mapped>>,
}

#[derive(Serialize)]
pub struct ErrorOut {
    pub pid: i32,
    pub error: String,
}

#[derive(Serialize)]
pub struct Document<'a> {
    schema: &'static str,
    processes: Vec<ProcessOut<'a>>,
    errors: Vec<ErrorOut>,
}

pub fn process<'a>(snap: &'a Snapshot, rows: Vec<&'a HandleInfo>) -> ProcessOut<'a> {
    let mut objects: Vec<(u64, Option<&str>)> =
        rows.iter().map(|h| (h.koid, h.dev.as_deref())).collect();
    objects.sort_unstable();
    objects.dedup();
    ProcessOut {
        pid: snap.pid,
        name: &snap.name,
        koid: snap.koid,
        source: snap.source,
        mixer: snap.mixer,
        complete: snap.complete,
        table_error: snap.table_error.as_deref(),
        handle_count: rows.len(),
        object_count: objects.len(),
        handles: rows,
        mappings: None,
    }
}

/// The whole document: every process read, and one entry per failure.
pub fn document(processes: Vec<ProcessOut<'_>>, errors: Vec<ErrorOut>) -> Document<'_> {
    Document {
        schema: SCHEMA,
        processes,
        errors,
    }
}
