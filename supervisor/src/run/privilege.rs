//! Set-user-ID, set-group-ID and file-capability programs under
//! `handles run`.
//!
//! The kernel execs such a file *without* its privileges when the exec is
//! traced by a tracer without CAP_SYS_PTRACE, and always when the process
//! has no_new_privs, which `handles run` sets (an unprivileged process may
//! only install its seccomp prefilter with it). So under `handles run` the
//! program normally runs as the user who started it, which changes what it
//! does (`passwd` cannot write /etc/shadow), and the user should be told.
//! The shim never runs in such an image either way (see
//! `shim/src/lib.rs`). What the kernel decided is read back from
//! `/proc/PID/status` after the exec, so the notice is true whichever way
//! it went.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What makes an executable file privileged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileBits {
    /// Set-user-ID: the owner's uid.
    pub setuid: Option<u32>,
    /// Set-group-ID (with group execute): the file's gid.
    pub setgid: Option<u32>,
    /// A `security.capability` extended attribute.
    pub caps: bool,
}

impl FileBits {
    pub fn from_mode(mode: u32, uid: u32, gid: u32, caps: bool) -> FileBits {
        let sgid = libc::S_ISGID | libc::S_IXGRP;
        FileBits {
            setuid: (mode & libc::S_ISUID != 0).then_some(uid),
            // The kernel's rule: S_ISGID without group execute is
            // mandatory locking, not set-group-ID.
            setgid: (mode & sgid == sgid).then_some(gid),
            caps,
        }
    }

    fn any(&self) -> bool {
        self.setuid.is_some() || self.setgid.is_some() || self.caps
    }
}

/// The credentials of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Creds {
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
    pub egid: u32,
    /// CapPrm is not empty.
    pub cap_permitted: bool,
}

/// Reads the `Uid:`, `Gid:` and `CapPrm:` lines of a status file's text.
pub(crate) fn parse_status(text: &str) -> Option<Creds> {
    let ids = |key: &str| -> Option<(u32, u32)> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        let mut it = line.split_whitespace().map(str::parse::<u32>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    };
    let (ruid, euid) = ids("Uid:")?;
    let (rgid, egid) = ids("Gid:")?;
    let cap_permitted = text
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|c| c != 0);
    Some(Creds {
        ruid,
        euid,
        rgid,
        egid,
        cap_permitted,
    })
}

/// The notice for a program that exec'ed a privileged file, None for an
/// ordinary one. `shim`: the job preloads the shim.
pub(crate) fn notice(path: &str, bits: FileBits, creds: Creds, shim: bool) -> Option<String> {
    if !bits.any() {
        return None;
    }
    let what = match (bits.setuid, bits.setgid, bits.caps) {
        (Some(_), Some(_), _) => "set-user-ID and set-group-ID",
        (Some(_), None, _) => "set-user-ID",
        (None, Some(_), _) => "set-group-ID",
        (None, None, _) => "a file-capability program",
    };
    // Which privileges the kernel granted: the effective id became the
    // file's while the real one is the caller's, or the capabilities are
    // there.
    let uid_granted = bits
        .setuid
        .is_some_and(|u| creds.euid == u && creds.ruid != u);
    let gid_granted = bits
        .setgid
        .is_some_and(|g| creds.egid == g && creds.rgid != g);
    let granted = uid_granted || gid_granted || (bits.caps && creds.cap_permitted);
    // A file that is set-ID to the caller's own ids changes nothing.
    let moot = !bits.caps
        && bits.setuid.is_none_or(|u| creds.ruid == u)
        && bits.setgid.is_none_or(|g| creds.rgid == g);
    let runs = if granted {
        format!(
            "it runs with its privileges (uid {} euid {}, gid {} egid {})",
            creds.ruid, creds.euid, creds.rgid, creds.egid
        )
    } else if moot {
        format!(
            "it runs as its owner already (uid {}, gid {})",
            creds.euid, creds.egid
        )
    } else {
        "under handles run (ptrace, no_new_privs) it runs without its privileges".to_string()
    };
    let shim = if shim {
        ", and the shim is not loaded into it"
    } else {
        ""
    };
    Some(format!("handles: {path} is {what}: {runs}{shim}\n"))
}

/// At PTRACE_EVENT_EXEC: the notice for the image process `pid` has just
/// exec'ed, if its file's `bits` say it is privileged. What the kernel
/// made of them is read from `/proc/PID/status`; None when it cannot be.
pub(crate) fn notice_for_exec(pid: i32, bits: FileBits, shim: bool) -> Option<String> {
    if !bits.any() {
        return None;
    }
    let exe = format!("/proc/{pid}/exe");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let creds = parse_status(&status)?;
    let path = std::fs::read_link(&exe)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or(exe);
    notice(&path, bits, creds, shim)
}

/// Whether the file has a `security.capability` extended attribute.
pub(crate) fn has_file_caps(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: getxattr with two NUL-terminated strings and a NULL buffer of
    // size 0 (only the value's size is returned; nothing is written).
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpasswd\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n";

    #[test]
    fn status_lines() {
        let c = parse_status(STATUS).expect("parses");
        assert_eq!((c.ruid, c.euid, c.rgid, c.egid), (1000, 0, 1000, 1000));
        assert!(c.cap_permitted);
        assert_eq!(parse_status("Uid:\t1\n"), None);
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("Uid:\tx\t1\nGid:\t1\t1\n"), None);
    }

    #[test]
    fn bits_follow_the_kernel() {
        assert_eq!(FileBits::from_mode(0o104755, 0, 0, false).setuid, Some(0));
        assert_eq!(FileBits::from_mode(0o102755, 0, 42, false).setgid, Some(42));
        assert_eq!(FileBits::from_mode(0o102745, 0, 42, false).setgid, None);
        assert!(!FileBits::from_mode(0o100755, 0, 0, false).any());
    }

    fn creds(ruid: u32, euid: u32) -> Creds {
        Creds {
            ruid,
            euid,
            rgid: 5,
            egid: 5,
            cap_permitted: false,
        }
    }

    #[test]
    fn the_notice_says_what_the_kernel_did() {
        let suid_root = FileBits::from_mode(0o104755, 0, 0, false);
        assert_eq!(
            notice("/usr/bin/passwd", suid_root, creds(1000, 1000), true).as_deref(),
            Some("handles: /usr/bin/passwd is set-user-ID: under handles run (ptrace, no_new_privs) it runs without its privileges, and the shim is not loaded into it\n")
        );
        let granted = notice("/usr/bin/passwd", suid_root, creds(1000, 0), false).expect("notice");
        assert!(
            granted.contains("it runs with its privileges (uid 1000 euid 0"),
            "{granted}"
        );
        assert!(!granted.contains("shim"), "{granted}");
        let moot = notice("/usr/bin/passwd", suid_root, creds(0, 0), true).expect("notice");
        assert!(moot.contains("as its owner already"), "{moot}");
        let caps = FileBits::from_mode(0o100755, 0, 0, true);
        let c = notice("/usr/bin/ping", caps, creds(1000, 1000), true).expect("notice");
        assert!(
            c.contains("is a file-capability program: under handles run"),
            "{c}"
        );
        assert_eq!(
            notice("/bin/true", FileBits::default(), creds(0, 0), true),
            None
        );
        for n in [granted, moot, c] {
            assert_eq!(n.matches('\n').count(), 1, "one line: {n}");
        }
    }

    #[test]
    fn an_ordinary_process_gets_no_notice() {
        let (bits, _) = super::super::images::exe_bits(std::process::id() as i32).expect("own exe");
        assert!(!bits.any());
        assert_eq!(notice_for_exec(std::process::id() as i32, bits, true), None);
        assert!(super::super::images::exe_bits(i32::MAX).is_none());
    }
}
