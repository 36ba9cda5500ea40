//! systemd's notify protocol (`sd_notify(3)`), written by hand: one datagram per
//! message to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for
//! the abstract namespace). `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`;
//! `$WATCHDOG_USEC` (with `$WATCHDOG_PID`, when set, naming this process) gives the
//! watchdog interval.
//!
//! Owns: the notify socket. Must not: fail the process when systemd is absent (no
//! `$NOTIFY_SOCKET`: every call is a no-op) or block (datagrams, non-blocking).

#![forbid(unsafe_code)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to systemd's notify socket, or nothing outside systemd.
#[derive(Debug)]
pub struct Notifier {
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a no-op notifier when it is unset or unusable (one
    /// warning then).
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { sock: None };
        };
        let path = path.to_string_lossy().into_owned();
        match connect(&path) {
            Ok(sock) => Notifier { sock: Some(sock) },
            Err(e) => {
                tracing::warn!(socket = %path, error = %e, "cannot reach systemd's notify socket; not notifying");
                Notifier { sock: None }
            }
        }
    }

    /// Whether systemd is listening.
    pub fn is_active(&self) -> bool {
        self.sock.is_some()
    }

    /// Send one message (`READY=1`, `STATUS=...`, ...); errors are logged once per
    /// message at debug level and otherwise ignored.
    pub fn notify(&self, msg: &str) {
        if let Some(s) = &self.sock {
            if let Err(e) = s.send(msg.as_bytes()) {
                tracing::debug!(error = %e, "sd_notify send failed");
            }
        }
    }
}

fn connect(path: &str) -> std::io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(path)?;
    }
    Ok(sock)
}

/// The watchdog interval systemd expects pings within (`$WATCHDOG_USEC`), if the
/// watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("voxd-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: Some(connect(path.to_str().unwrap()).unwrap()),
        };
        n.notify("READY=1");
        n.notify("STATUS=3 active calls");
        let mut buf = [0u8; 64];
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STATUS=3 active calls");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn abstract_socket_names_work() {
        let name = format!("voxd-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let c = connect(&format!("@{name}")).unwrap();
        c.send(b"WATCHDOG=1").unwrap();
        let mut buf = [0u8; 16];
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }

    #[test]
    fn no_socket_is_a_no_op() {
        let n = Notifier { sock: None };
        assert!(!n.is_active());
        n.notify("READY=1");
    }
}
