//! Type filters: Fuchsia's -t -v -p -c -e -s, `--type`, and -r.

use handles_model::ObjType;

use crate::args::ShowArgs;

/// Which rows to show.
pub struct TypeFilter {
    selected: Vec<ObjType>,
    reverse: bool,
}

impl TypeFilter {
    /// Builds the filter; an unknown `--type` name is an error that lists the
    /// valid ones.
    pub fn from_args(a: &ShowArgs) -> Result<TypeFilter, String> {
        let mut selected = Vec::new();
        for (on, ty) in [
            (a.task, ObjType::Process),
            (a.vmo, ObjType::Vmo),
            (a.port, ObjType::Port),
            (a.channel, ObjType::Channel),
            (a.event, ObjType::Event),
            (a.socket, ObjType::Socket),
        ] {
            if on {
                selected.push(ty);
            }
        }
        for name in &a.types {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            match ObjType::from_name(name) {
                Some(t) => selected.push(t),
                None => {
                    let valid: Vec<&str> = ObjType::ALL.iter().map(|t| t.name()).collect();
                    return Err(format!(
                        "unknown type '{name}' (valid types: {})",
                        valid.join(", ")
                    ));
                }
            }
        }
        Ok(TypeFilter {
            selected,
            reverse: a.reverse,
        })
    }

    /// With no type selected every row shows (and -r alone hides nothing).
    pub fn shows(&self, ty: ObjType) -> bool {
        if self.selected.is_empty() {
            return true;
        }
        self.selected.contains(&ty) != self.reverse
    }
}
