//! Renderers: Fuchsia's table (short and long), JSON, the zxdb-style
//! debugger views and the creation stacks of `--stacks`. Each takes a
//! snapshot and the rows to show.

pub mod json;
pub mod stacks;
pub mod table;
pub mod zxdb;
