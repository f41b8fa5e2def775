//! sock_diag: one netlink dump for every unix socket (peers, names, states)
//! and one per inet family and protocol (addresses, states), so that a table
//! with thousands of sockets costs a handful of syscalls, not one query per
//! socket. This is what `ss -x` and `lsof +E` use for unix peers.
//!
//! The parsers are pure functions over the bytes the kernel returns, so they
//! are tested on hand-built messages and fuzzed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

/// A unix socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSock {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// TCP_ESTABLISHED (1), TCP_LISTEN (10), TCP_CLOSE (7), ...
    pub state: u8,
    /// The bound name: a path, `@name` for the abstract namespace.
    pub name: Option<String>,
    /// The peer's inode, 0 when unconnected.
    pub peer: u64,
}

/// An inet socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSock {
    pub ino: u64,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Socket facts for one network namespace, keyed by inode.
#[derive(Debug, Default)]
pub struct SockTable {
    pub unix: HashMap<u64, UnixSock>,
    pub inet: HashMap<u64, InetSock>,
    /// Set when the unix dump could not be made (no netlink in a sandbox,
    /// say): peers are then unknown rather than absent.
    pub unix_error: Option<String>,
}

fn open_diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one dump request and returns every payload of type
/// SOCK_DIAG_BY_FAMILY until NLMSG_DONE.
fn dump(sock: &OwnedFd, request_body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let len = 16 + request_body.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    req.extend_from_slice(request_body);
    // SAFETY: req is a valid buffer of req.len() bytes for the whole call.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        match split_messages(&buf[..n as usize], &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) => {}
            Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Splits one datagram of netlink messages. Appends SOCK_DIAG payloads to
/// `out`; returns `Ok(true)` at NLMSG_DONE and `Err(errno)` on NLMSG_ERROR.
/// Truncated or malformed messages end the datagram, never panic.
pub fn split_messages(mut data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<bool, i32> {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            return Ok(false);
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = data
                    .get(16..20)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EIO);
                if errno == 0 {
                    return Ok(true);
                }
                return Err(-errno);
            }
            SOCK_DIAG_BY_FAMILY => out.push(data[16..len].to_vec()),
            _ => {}
        }
        let aligned = (len + 3) & !3;
        data = data.get(aligned..).unwrap_or(&[]);
    }
    Ok(false)
}

/// Iterates the rtattrs that follow a fixed header.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]);
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        let aligned = (len + 3) & !3;
        data = data.get(aligned..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses one `unix_diag_msg` with its attributes.
pub fn parse_unix(msg: &[u8]) -> Option<UnixSock> {
    // struct unix_diag_msg { u8 family, type, state, pad; u32 ino; u32 cookie[2]; }
    if msg.len() < 16 || msg[0] != libc::AF_UNIX as u8 {
        return None;
    }
    let mut sock = UnixSock {
        ino: u64::from(u32_at(msg, 4)?),
        sock_type: msg[1],
        state: msg[2],
        name: None,
        peer: 0,
    };
    for (ty, payload) in attrs(&msg[16..]) {
        match ty {
            UNIX_DIAG_PEER => sock.peer = u64::from(u32_at(payload, 0).unwrap_or(0)),
            UNIX_DIAG_NAME => sock.name = Some(unix_name(payload)),
            _ => {}
        }
    }
    Some(sock)
}

/// A sun_path as `ss` shows it: abstract names start with `@`.
fn unix_name(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    }
}

/// Parses one `inet_diag_msg`.
pub fn parse_inet(msg: &[u8], protocol: u8) -> Option<InetSock> {
    // struct inet_diag_msg { u8 family, state, timer, retrans;
    //   struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; } id;
    //   u32 expires, rqueue, wqueue, uid, inode; }
    if msg.len() < 72 {
        return None;
    }
    let family = msg[0];
    let sport = u16::from_be_bytes([msg[4], msg[5]]);
    let dport = u16::from_be_bytes([msg[6], msg[7]]);
    let addr = |at: usize| -> Option<IpAddr> {
        let b = msg.get(at..at + 16)?;
        if family == libc::AF_INET as u8 {
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        } else if family == libc::AF_INET6 as u8 {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        } else {
            None
        }
    };
    Some(InetSock {
        ino: u64::from(u32_at(msg, 68)?),
        protocol,
        state: msg[1],
        local: SocketAddr::new(addr(8)?, sport),
        remote: SocketAddr::new(addr(24)?, dport),
    })
}

fn unix_request() -> Vec<u8> {
    // struct unix_diag_req { u8 family, protocol; u16 pad; u32 states, ino, show; u32 cookie[2]; }
    let mut r = Vec::with_capacity(24);
    r.push(libc::AF_UNIX as u8);
    r.push(0);
    r.extend_from_slice(&0u16.to_ne_bytes());
    r.extend_from_slice(&u32::MAX.to_ne_bytes());
    r.extend_from_slice(&0u32.to_ne_bytes());
    r.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    r.extend_from_slice(&[0xff; 8]);
    r
}

fn inet_request(family: u8, protocol: u8) -> Vec<u8> {
    // struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
    let mut r = vec![family, protocol, 0, 0];
    r.extend_from_slice(&u32::MAX.to_ne_bytes());
    r.extend_from_slice(&[0u8; 48]);
    r
}

impl SockTable {
    /// Dumps the unix sockets of the caller's network namespace.
    pub fn load_unix(&mut self) {
        let result = open_diag_socket().and_then(|sock| dump(&sock, &unix_request()));
        match result {
            Ok(msgs) => {
                for m in msgs {
                    if let Some(u) = parse_unix(&m) {
                        self.unix.insert(u.ino, u);
                    }
                }
            }
            Err(e) => self.unix_error = Some(format!("unix sock_diag dump failed: {e}")),
        }
    }

    /// Dumps TCP and UDP sockets, IPv4 and IPv6.
    pub fn load_inet(&mut self) {
        let Ok(sock) = open_diag_socket() else {
            return;
        };
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
                // A missing family (no IPv6) is not an error worth reporting.
                if let Ok(msgs) = dump(&sock, &inet_request(family, proto)) {
                    for m in msgs {
                        if let Some(s) = parse_inet(&m, proto) {
                            if s.ino != 0 {
                                self.inet.insert(s.ino, s);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The other end of a connection whose both ends live on this host
    /// (loopback TCP, or connected UDP): the socket whose local address is
    /// this one's remote and vice versa.
    pub fn inet_peers(&self) -> HashMap<u64, u64> {
        let mut by_addrs: HashMap<(u8, SocketAddr, SocketAddr), u64> = HashMap::new();
        for s in self.inet.values() {
            if s.remote.port() != 0 {
                by_addrs.insert((s.protocol, s.local, s.remote), s.ino);
            }
        }
        let mut peers = HashMap::new();
        for s in self.inet.values() {
            if s.remote.port() == 0 {
                continue;
            }
            if let Some(&other) = by_addrs.get(&(s.protocol, s.remote, s.local)) {
                if other != s.ino {
                    peers.insert(s.ino, other);
                }
            }
        }
        peers
    }
}

/// TCP state names as `ss` prints them.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn rtattr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn unix_msg(ino: u32, peer: u32, name: &[u8]) -> Vec<u8> {
        let mut m = vec![libc::AF_UNIX as u8, 1, 1, 0];
        m.extend_from_slice(&ino.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend(rtattr(UNIX_DIAG_PEER, &peer.to_ne_bytes()));
        m.extend(rtattr(UNIX_DIAG_NAME, name));
        m
    }

    #[test]
    fn unix_messages_round_trip() {
        let mut data = nlmsg(SOCK_DIAG_BY_FAMILY, &unix_msg(10, 11, b"\0abstract"));
        data.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &unix_msg(11, 10, b"/run/x.sock\0"),
        ));
        data.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert_eq!(split_messages(&data, &mut out), Ok(true));
        let socks: Vec<_> = out.iter().filter_map(|m| parse_unix(m)).collect();
        assert_eq!(socks.len(), 2);
        assert_eq!(socks[0].peer, 11);
        assert_eq!(socks[0].name.as_deref(), Some("@abstract"));
        assert_eq!(socks[1].name.as_deref(), Some("/run/x.sock"));
    }

    #[test]
    fn error_and_truncation() {
        let mut out = Vec::new();
        let err = nlmsg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(split_messages(&err, &mut out), Err(libc::EPERM));
        let mut trunc = nlmsg(SOCK_DIAG_BY_FAMILY, &unix_msg(1, 2, b"x"));
        trunc[0] = 200;
        assert_eq!(split_messages(&trunc, &mut out), Ok(false));
        assert!(out.is_empty());
        assert_eq!(parse_unix(&[1, 2, 3]), None);
        assert_eq!(parse_inet(&[0; 10], 6), None);
        // A bad attribute length stops attribute parsing, not the message.
        let mut m = unix_msg(5, 6, b"n");
        m[16] = 0xff;
        assert_eq!(parse_unix(&m).map(|s| s.ino), Some(5));
    }

    #[test]
    fn inet_peer_matching() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut t = SockTable::default();
        for (ino, l, r) in [(1, a, b), (2, b, a)] {
            t.inet.insert(
                ino,
                InetSock {
                    ino,
                    protocol: 6,
                    state: 1,
                    local: l,
                    remote: r,
                },
            );
        }
        let p = t.inet_peers();
        assert_eq!(p.get(&1), Some(&2));
        assert_eq!(p.get(&2), Some(&1));
    }
}
