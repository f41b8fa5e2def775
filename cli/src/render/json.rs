//! JSON output. The schema is documented in docs/json.md and versioned by
//! the top-level `schema` field; fields are only ever added within a version.

use handles_supervisor::inspect::{HandleInfo, Snapshot};
use serde_json::{json, Value};

pub const SCHEMA: &str = "handles.table.v1";

fn handle(h: &HandleInfo) -> Value {
    let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("handle_hex".into(), json!(format!("{:#010x}", h.handle)));
        m.insert(
            "rights_names".into(),
            json!(h.rights().names().collect::<Vec<_>>()),
        );
    }
    v
}

pub fn process(snap: &Snapshot, rows: &[&HandleInfo]) -> Value {
    let mut objects: Vec<(u64, Option<&str>)> =
        rows.iter().map(|h| (h.koid, h.dev.as_deref())).collect();
    objects.sort_unstable();
    objects.dedup();
    json!({
        "pid": snap.pid,
        "name": snap.name,
        "koid": snap.koid,
        "source": snap.source,
        "mixer": snap.mixer,
        "complete": snap.complete,
        "handle_count": rows.len(),
        "object_count": objects.len(),
        "handles": rows.iter().map(|h| handle(h)).collect::<Vec<_>>(),
    })
}

/// The whole document: every process read, and one entry per failure.
pub fn document(processes: Vec<Value>, errors: Vec<Value>) -> Value {
    json!({
        "schema": SCHEMA,
        "processes": processes,
        "errors": errors,
    })
}
