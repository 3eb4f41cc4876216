//! Finding the process that holds a port, for the "address in use" error.

use std::fmt;
use std::fs;

/// A process that has a socket bound to a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: u32,
    /// The process's command name, from `/proc/<pid>/comm`.
    pub command: String,
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    fn tables(self) -> [&'static str; 2] {
        match self {
            Protocol::Tcp => ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"],
            Protocol::Udp => ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"],
        }
    }
}

/// Looks up which process holds `port`: the socket inodes bound to it in the
/// calling thread's network namespace, then a process with an fd on one of
/// them. Returns `None` when none is visible, as for processes of other
/// users whose `/proc/<pid>/fd` this user may not read.
pub(crate) fn find(protocol: Protocol, port: u16) -> Option<PortHolder> {
    let inodes: Vec<u64> = protocol
        .tables()
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|table| socket_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }

    let links: Vec<String> = inodes
        .iter()
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| links.iter().any(|link| target.as_os_str() == link.as_str()));
        if holds {
            let command = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(PortHolder {
                pid,
                command: command.trim_end().to_owned(),
            });
        }
    }
    None
}

/// Inodes of the sockets whose local port is `port` in a `/proc/net/tcp`,
/// `tcp6`, `udp` or `udp6` table. Columns: `sl local_address rem_address st
/// ... uid timeout inode`, the local address as `HEXADDR:HEXPORT`.
fn socket_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(hex_port, 16).ok()?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (local_port == port && inode != 0).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00000F9B 00000000     0        0 0 3 0000000000000000
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn inodes_for_port() {
        // 0x1F90 is 8080; the TIME_WAIT entry has inode 0 and is skipped.
        assert_eq!(socket_inodes(TCP_TABLE, 8080), vec![123456]);
        assert_eq!(socket_inodes(TCP_TABLE, 22), vec![2222]);
        assert_eq!(socket_inodes(TCP_TABLE, 443), Vec::<u64>::new());
    }

    #[test]
    fn ipv6_table_port() {
        let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
";
        assert_eq!(socket_inodes(table, 53), vec![777]);
    }

    #[test]
    fn holder_display() {
        let holder = PortHolder {
            pid: 42,
            command: "nginx".to_owned(),
        };
        assert_eq!(holder.to_string(), "pid 42 (nginx)");
    }
}
