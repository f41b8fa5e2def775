//! Moving a process to the strict filter.
//!
//! A job that preloads the shim starts under the lenient filter: fd
//! syscalls made from shared-library code (`syscalls::LIBRARY_IPS`) run
//! without a stop unless the shim marks them, because the shim covers
//! that process. An image that will not load the shim (a static binary,
//! an environment stripped of LD_PRELOAD, a foreign dynamic loader) has
//! nobody covering its library calls, so at its exec the supervisor
//! installs the strict filter on top. Filters only ever add up (the
//! kernel applies the most restrictive verdict of all of them), so the
//! process and every descendant stay strict from then on; a descendant
//! that loads the shim again is merely checked twice over.
//!
//! The filter is installed from inside the process, by a `seccomp`
//! syscall injected before the new image's first instruction and issued
//! from the `syscall` instruction every vDSO has. `no_new_privs` is
//! already set (the first filter needed it), so no privilege is needed.

use super::procfs::{comm, Auxv};
use super::state::Job;
use super::tracer;
use super::tracer::Stopped;

impl Job {
    /// At the exec stop of `tid` (process `tgid`): installs the strict
    /// filter. If that fails the process would run with its library calls
    /// unchecked, so it is said on stderr.
    pub(super) fn make_strict(&mut self, stop: &Stopped, tgid: i32) {
        let Some(filter) = self.strict_filter.clone() else {
            return;
        };
        match self.install_filter(stop, tgid, &filter) {
            Ok(()) => {
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.strict = true;
                }
            }
            // Killed at its exec stop (a test suite's kill() right after
            // spawning, say): it runs nothing, nothing goes unchecked.
            Err(_) if stop.regs().is_err_and(|e| e == nix::errno::Errno::ESRCH) => {}
            Err(why) => {
                let name = comm(tgid);
                self.write_report(&format!(
                    "handles: process {tgid} ({name}) does not load the shim and could not be \
                     given the strict filter ({why}): its library calls go unchecked\n"
                ));
            }
        }
    }

    fn install_filter(
        &mut self,
        stop: &Stopped,
        tgid: i32,
        filter: &[libc::sock_filter],
    ) -> Result<(), String> {
        let regs = stop.regs().map_err(|e| e.to_string())?;
        if regs.cs != 0x33 {
            // A 32-bit image: the filter already stops on every syscall
            // of a foreign architecture.
            return Ok(());
        }
        let vdso = Auxv::read(tgid)
            .and_then(|a| a.get(libc::AT_SYSINFO_EHDR))
            .ok_or("no vDSO")?;
        let offset = match self.vdso_syscall {
            Some(o) => o,
            None => {
                let o =
                    find_syscall_insn(stop, vdso).ok_or("no syscall instruction in the vDSO")?;
                self.vdso_syscall = Some(o);
                o
            }
        };
        // Below the red zone of the new image's initial stack, which the
        // kernel mapped with room to spare below argv and the environment.
        let bytes: Vec<u8> = filter
            .iter()
            .flat_map(|f| {
                let mut b = [0u8; 8];
                b[..2].copy_from_slice(&f.code.to_ne_bytes());
                b[2] = f.jt;
                b[3] = f.jf;
                b[4..].copy_from_slice(&f.k.to_ne_bytes());
                b
            })
            .collect();
        let prog_addr = (regs.rsp - 1024 - bytes.len() as u64) & !15;
        let fprog_addr = prog_addr - 16;
        let mut fprog = [0u8; 16];
        fprog[..2].copy_from_slice(&(filter.len() as u16).to_ne_bytes());
        fprog[8..].copy_from_slice(&prog_addr.to_ne_bytes());
        stop.write_mem(prog_addr, &bytes)
            .map_err(|e| e.to_string())?;
        stop.write_mem(fprog_addr, &fprog)
            .map_err(|e| e.to_string())?;
        let args = [
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
            crate::seccomp::filter_flags(),
            fprog_addr,
            0,
            0,
            0,
        ];
        let ret = stop
            .inject_after_exec(vdso + offset, libc::SYS_seccomp, args, &mut self.deferred)
            .map_err(|e| format!("{e:?}"))?;
        match tracer::errno_of(ret) {
            None => Ok(()),
            Some(e) => Err(std::io::Error::from_raw_os_error(e).to_string()),
        }
    }
}

/// Offset of the first `syscall` instruction (0f 05) in the vDSO mapped
/// at `base` in `tid`. The vDSO's fallback paths (clock_gettime without a
/// usable clocksource) contain one.
fn find_syscall_insn(stop: &Stopped, base: u64) -> Option<u64> {
    // One or two pages depending on the kernel; the whole mapping is
    // executable, and the CPU decodes from wherever rip points.
    let image = stop
        .read_mem(base, 2 * 4096)
        .or_else(|_| stop.read_mem(base, 4096))
        .ok()?;
    image
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| i as u64)
}
