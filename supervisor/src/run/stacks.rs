//! The stacks of stopped calls: captured (native frames, then a CPython
//! program's Python frames), symbolized for reports, and where a call
//! comes from (the dynamic loader, the shim).

use std::sync::Arc;

use super::fdtable::Stack;
use super::state::Job;
use super::tracer::{Regs, Stopped};
use crate::backtrace::{Frame, ModuleMap, StartRegs, StopReason};

impl Job {
    pub(super) fn capture_stack(
        &mut self,
        stop: &Stopped,
        tgid: i32,
        regs: Option<&Regs>,
    ) -> Option<Stack> {
        let tid = stop.tid();
        if self.opts.stack_depth == 0 {
            return None;
        }
        let regs = regs?;
        let depth = self.opts.stack_depth;
        let proc_ = self.procs.get_mut(&tgid)?;
        // Re-read the maps when the call comes from code mapped since the
        // last read (the dynamic loader maps libc after the first opens).
        if proc_
            .maps
            .as_ref()
            .is_none_or(|m| m.module_of(regs.rip).is_none())
        {
            proc_.maps = ModuleMap::read(tgid).ok();
        }
        let maps = proc_.maps.as_ref()?;
        // A stop on a call the shim issues for the program (a bad call it
        // hands over, a marker) starts in the shim's own frames, which
        // reports leave out (`symbolize`): they must not count against
        // the depth, or `--stack-depth 3` would leave such a backtrace
        // empty. Unwind past them, then cut after `depth` frames of the
        // program's.
        let from_shim = in_shim(maps, regs.rip);
        let want = if from_shim {
            depth + SHIM_FRAMES
        } else {
            depth
        };
        let first = self
            .unwinder
            .unwind_detailed(tid, maps, StartRegs::from(regs), want);
        let mut pcs = match first.stop {
            // Code mapped since the snapshot (dlopen): refresh once.
            StopReason::OutsideMappings(_) => match ModuleMap::read(tgid) {
                Ok(fresh) => {
                    let again = self
                        .unwinder
                        .unwind(tid, &fresh, StartRegs::from(regs), want);
                    proc_.maps = Some(fresh);
                    again
                }
                Err(_) => first.frames,
            },
            _ => first.frames,
        };
        if from_shim {
            // The shim's frames stay (the first is the stop's own address,
            // which `symbolize` takes as an instruction pointer, the rest
            // as return addresses; it then leaves them all out).
            let shim = proc_.maps.as_ref().map_or(0, |maps| {
                pcs.iter().take_while(|&&pc| in_shim(maps, pc)).count()
            });
            pcs.truncate(shim + depth);
        }
        self.append_python(stop, tgid, regs, &mut pcs);
        Some(Arc::new(pcs))
    }

    /// Appends the Python frames of the stopped thread to its native
    /// stack `pcs`, when its process runs a CPython interpreter.
    pub(super) fn append_python(
        &mut self,
        stop: &Stopped,
        tgid: i32,
        regs: &Regs,
        pcs: &mut Vec<u64>,
    ) {
        let tid = stop.tid();
        let Some(proc_) = self.procs.get_mut(&tgid) else {
            return;
        };
        if proc_.maps.is_none() {
            proc_.maps = ModuleMap::read(tgid).ok();
        }
        let Some(maps) = proc_.maps.as_ref() else {
            return;
        };
        let Some(interp) = self.python.interpreter(maps) else {
            return;
        };
        // On x86_64 glibc the thread pointer (fs base) is pthread_self(),
        // which CPython keeps as the thread state's thread_id.
        let frames = self.python.capture(tid, tgid, &interp, regs.fs_base);
        crate::backtrace::python::encode(&frames, pcs);
    }

    pub(super) fn symbolize(
        &mut self,
        tgid: i32,
        stack: Option<&Stack>,
    ) -> Vec<crate::backtrace::Frame> {
        let Some(stack) = stack else {
            return Vec::new();
        };
        let p = self.procs.get(&tgid);
        // The shim's code registry names code objects freed since.
        let view = p
            .and_then(|p| p.shim.as_ref())
            .and_then(|s| s.table())
            .and_then(|m| m.view().ok());
        let codes = view.as_ref().map(|v| v.codes());
        crate::backtrace::symbolize_recorded(
            &mut self.symbolizer,
            &mut self.python,
            p.and_then(|p| p.maps.as_ref()),
            tgid,
            stack,
            codes.as_ref(),
        )
    }

    /// The symbolized stack of the call being judged. Reports always carry
    /// it, even with stack recording off (`--stack-depth 0`).
    pub(super) fn offending_stack(&mut self, stop: &Stopped, tgid: i32, regs: &Regs) -> Vec<Frame> {
        let stack = self.capture_stack(stop, tgid, Some(regs)).or_else(|| {
            let maps = ModuleMap::read(tgid).ok()?;
            let mut pcs = self
                .unwinder
                .unwind(stop.tid(), &maps, StartRegs::from(regs), 64);
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.maps.get_or_insert(maps);
            }
            self.append_python(stop, tgid, regs, &mut pcs);
            Some(Arc::new(pcs))
        });
        self.symbolize(tgid, stack.as_ref())
    }

    /// Was the call at `ip` made by the dynamic loader (the fds of the
    /// libraries it maps, closed before the program runs)? Quarantining
    /// those would shift every fd number the program gets after them.
    pub(super) fn made_by_loader(&mut self, stop: &Stopped, tgid: i32, ip: u64) -> bool {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return false;
        };
        let (base, end) = &mut p.loader;
        if *base == 0 {
            return false;
        }
        let base = *base;
        let end = *end.get_or_insert_with(|| {
            super::execinfo::image_span(stop.tid(), base)
                .map_or(base, |span| base.saturating_add(span))
        });
        (base..end).contains(&ip)
    }
}

/// Frames the shim may have on the stack below the program's call (its
/// wrapper, judge, report and syscall functions), unwound beyond
/// `--stack-depth` and then left out.
const SHIM_FRAMES: usize = 16;

/// Whether `pc` lies in the LD_PRELOAD shim (named as `symbolize`'s
/// filter names it).
fn in_shim(maps: &ModuleMap, pc: u64) -> bool {
    maps.module_of(pc).is_some_and(|(path, _)| {
        std::path::Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libhandles_shim"))
    })
}
