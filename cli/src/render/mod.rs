//! Renderers: Fuchsia's table (short and long), JSON, and the zxdb-style
//! debugger views. Each takes a snapshot and the rows to show.

pub mod json;
pub mod table;
pub mod zxdb;
