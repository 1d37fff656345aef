//! The control protocol between workers (and the CLI) and the supervisor.
//!
//! One request, one reply, each a single `SOCK_SEQPACKET` message on the
//! instance's Unix socket, so the kernel keeps message boundaries and a
//! truncated message is visible as such. A message is an 8-byte frame
//! header (magic `GRFC`, protocol version as little-endian `u16`, two zero
//! bytes) and a postcard-encoded [`Request`] or [`Reply`], at most
//! [`MAX_MESSAGE`] bytes in all. Anything else is malformed: the supervisor
//! answers with [`ControlError::Malformed`] or [`ControlError::Version`].

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType, sockopt,
};
use serde::{Deserialize, Serialize};

use crate::error::{FabricError, Result};

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest message, frame header included.
pub const MAX_MESSAGE: usize = 65_536;
/// Bytes before the body.
pub const FRAME_HEADER: usize = 8;
const MAGIC: [u8; 4] = *b"GRFC";
/// How long a caller waits for the supervisor's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks of the supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Is anyone there?
    Ping,
    /// Make this connection's process a participant. `holds` lists the
    /// leases its live handles hold (lease id, handle count), so a process
    /// that attaches again after losing its supervisor keeps its holds.
    Attach {
        /// (lease id, handles) pairs.
        holds: Vec<(u64, u32)>,
    },
    /// Lease a shared-memory segment of at least `min_bytes`.
    AcquireMem {
        /// Bytes wanted (rounded up to whole pages).
        min_bytes: u64,
        /// Time to live in seconds.
        lease_secs: u64,
    },
    /// Lease a pre-allocated file of at least `min_blocks` blocks.
    AcquireBlock {
        /// Blocks of [`BLOCK_SIZE`] bytes wanted.
        min_blocks: u64,
        /// Time to live in seconds.
        lease_secs: u64,
    },
    /// Become a holder of an existing lease.
    Open {
        /// The lease.
        lease_id: u64,
    },
    /// Move a lease's deadline to `lease_secs` from now.
    Renew {
        /// The lease.
        lease_id: u64,
        /// Seconds from now.
        lease_secs: u64,
    },
    /// Give a lease back: drop one hold, and end the lease if no holder
    /// is left.
    Release {
        /// The lease.
        lease_id: u64,
    },
    /// Drop one hold without ending the lease (a handle went away; the
    /// lease lives on until its deadline, for whoever opens it next).
    Unhold {
        /// The lease.
        lease_id: u64,
    },
    /// Expire a lease now (a failover drill).
    Expire {
        /// The lease.
        lease_id: u64,
    },
    /// Declare a lease dead now (a failover drill).
    Poison {
        /// The lease.
        lease_id: u64,
    },
    /// Start and supervise the workers of a topology (`grafos run`).
    Run {
        /// The topology file's text (TOML).
        topology: String,
        /// The file's directory (relative working directories start here).
        dir: String,
    },
    /// Stop the running topology's workers (reverse order, SIGTERM, then
    /// SIGKILL after the grace period).
    StopGroup,
    /// Send a signal to a worker's process group (a failover drill).
    Kill {
        /// The worker id (`name` or `name.N`).
        worker: String,
        /// The signal number.
        signal: i32,
    },
    /// Stop the workers, expire every lease, remove what the instance
    /// made, and exit.
    Shutdown,
}

/// Bytes in a block of a block lease.
pub const BLOCK_SIZE: u64 = 4096;

/// Whether a lease is shared memory or a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseKind {
    /// A shared-memory segment.
    Mem,
    /// A pre-allocated file in the data dir.
    Block,
}

/// A lease as the supervisor grants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Never reused within the instance.
    pub lease_id: u64,
    /// Memory or blocks.
    pub kind: LeaseKind,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix milliseconds of the deadline.
    pub deadline_ms: u64,
    /// The segment's object name (memory) or the file's path (blocks).
    pub location: String,
}

/// The supervisor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to `Ping`.
    Pong {
        /// The supervisor's pid.
        pid: u32,
    },
    /// Answer to `Attach`.
    Attached {
        /// This process's incarnation (never reused).
        incarnation: u64,
        /// Its row in the registry.
        row: u64,
        /// The instance token every segment of the instance carries.
        instance_token: u64,
    },
    /// Answer to `AcquireMem`, `AcquireBlock` and `Open`.
    Lease(LeaseGrant),
    /// Answer to `Renew`.
    Renewed {
        /// Unix milliseconds of the new deadline.
        deadline_ms: u64,
    },
    /// Answer to `Release`, `Unhold`, `Expire`, `Poison`, `Run`,
    /// `StopGroup`, `Kill` and `Shutdown`.
    Done,
    /// The request failed.
    Error(ControlError),
}

/// Why the supervisor refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlError {
    /// The message could not be decoded.
    Malformed(String),
    /// The message speaks another protocol version.
    Version {
        /// Version received.
        found: u16,
        /// Version spoken here.
        supported: u16,
    },
    /// A lease request came before `Attach`.
    NotAttached,
    /// The request's values are out of range.
    Invalid(String),
    /// The pool cannot cover the request.
    NoBudget {
        /// `memory` or `block`.
        pool_kind: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free.
        free: u64,
        /// The pool's size.
        capacity: u64,
    },
    /// No such lease.
    UnknownLease(u64),
    /// The lease has expired.
    LeaseExpired(u64),
    /// The lease is poisoned.
    LeasePoisoned(u64),
    /// The supervisor could not do it (a system call failed, a table is
    /// full).
    Failed(String),
}

impl From<ControlError> for FabricError {
    fn from(e: ControlError) -> FabricError {
        match e {
            ControlError::NoBudget {
                pool_kind,
                requested,
                free,
                capacity,
            } => FabricError::NoBudget {
                pool_kind,
                requested,
                free,
                capacity,
            },
            ControlError::UnknownLease(id) => FabricError::UnknownLease(id),
            ControlError::LeaseExpired(id) => FabricError::LeaseExpired(id),
            ControlError::LeasePoisoned(id) => FabricError::LeasePoisoned(id),
            ControlError::Invalid(reason) => FabricError::InvalidArgument(reason),
            ControlError::Malformed(reason) => FabricError::Refused(format!("malformed: {reason}")),
            ControlError::Version { found, supported } => FabricError::Refused(format!(
                "protocol version {found}, the supervisor speaks {supported}"
            )),
            ControlError::NotAttached => FabricError::Refused("not attached".into()),
            ControlError::Failed(reason) => FabricError::Refused(reason),
        }
    }
}

/// Frames and encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    // Encoding our own enums into a Vec cannot fail.
    postcard::to_extend(message, out).expect("control messages encode")
}

/// Checks a message's frame and decodes its body.
///
/// # Errors
/// `Malformed` for a short, oversized, badly framed or undecodable
/// message (trailing bytes included); `Version` for another version.
pub fn decode<'a, T: Deserialize<'a>>(message: &'a [u8]) -> Result<T, ControlError> {
    if message.len() > MAX_MESSAGE {
        return Err(ControlError::Malformed(format!(
            "{} bytes, the limit is {MAX_MESSAGE}",
            message.len()
        )));
    }
    if message.len() < FRAME_HEADER || message[..4] != MAGIC {
        return Err(ControlError::Malformed("no GRFC frame header".into()));
    }
    let version = u16::from_le_bytes([message[4], message[5]]);
    if version != PROTOCOL_VERSION {
        return Err(ControlError::Version {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    if message[6..8] != [0, 0] {
        return Err(ControlError::Malformed("reserved frame bytes set".into()));
    }
    match postcard::take_from_bytes(&message[FRAME_HEADER..]) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(ControlError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(ControlError::Malformed(e.to_string())),
    }
}

/// A connection to an instance's supervisor: requests go out one at a
/// time, each waiting for its reply.
#[derive(Debug)]
pub struct Connection {
    instance: String,
    socket: OwnedFd,
}

impl Connection {
    /// Connects to the supervisor listening on `socket`.
    ///
    /// # Errors
    /// `Disconnected` if nobody listens there.
    pub fn connect(instance: &str, socket: &Path) -> Result<Connection> {
        let disconnected = |reason: String| FabricError::Disconnected {
            instance: instance.to_owned(),
            reason,
        };
        let addr = SocketAddrUnix::new(socket)
            .map_err(|e| disconnected(format!("socket path {}: {e}", socket.display())))?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| disconnected(format!("socket: {e}")))?;
        rustix::net::connect(&fd, &addr).map_err(|e| {
            disconnected(format!(
                "no supervisor at {} ({e}); start one with `grafos up`",
                socket.display()
            ))
        })?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(REPLY_TIMEOUT))
            .map_err(|e| disconnected(format!("SO_RCVTIMEO: {e}")))?;
        Ok(Connection {
            instance: instance.to_owned(),
            socket: fd,
        })
    }

    /// Sends raw bytes as one message and returns the raw reply (for tests
    /// that feed the supervisor garbage).
    ///
    /// # Errors
    /// `Disconnected` if the supervisor is gone or does not answer in
    /// time.
    pub fn exchange(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.try_exchange(message).map_err(|reason| {
            // Whatever went wrong, a reply may still arrive later and would
            // answer the next request: this connection is done.
            let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both);
            FabricError::Disconnected {
                instance: self.instance.clone(),
                reason: format!("supervisor connection lost ({reason})"),
            }
        })
    }

    fn try_exchange(&self, message: &[u8]) -> std::result::Result<Vec<u8>, String> {
        retry_eintr(|| rustix::net::send(&self.socket, message, SendFlags::NOSIGNAL))
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let (_, len) =
            retry_eintr(|| rustix::net::recv(&self.socket, &mut buf[..], RecvFlags::TRUNC))
                .map_err(|e| match e {
                    rustix::io::Errno::AGAIN => format!("no reply within {REPLY_TIMEOUT:?}"),
                    e => format!("recv: {e}"),
                })?;
        if len == 0 {
            return Err("the supervisor hung up".into());
        }
        buf.truncate(len.min(buf.len()));
        Ok(buf)
    }

    /// Whether the supervisor has hung up on this connection (or it broke).
    pub fn is_closed(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.socket,
            rustix::event::PollFlags::empty(),
        )];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR),
            Err(_) => true,
        }
    }

    /// Sends a request and decodes the reply; an error reply becomes a
    /// [`FabricError`].
    ///
    /// # Errors
    /// `Disconnected`, or the error the supervisor replied with.
    pub fn call(&self, request: &Request) -> Result<Reply> {
        let raw = self.exchange(&encode(request))?;
        match decode::<Reply>(&raw) {
            Ok(Reply::Error(e)) => Err(e.into()),
            Ok(reply) => Ok(reply),
            Err(e) => Err(FabricError::Refused(format!("unreadable reply: {e:?}"))),
        }
    }
}

/// Runs a system call again while a signal interrupts it.
fn retry_eintr<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Ping,
            Request::AcquireMem {
                min_bytes: 1 << 20,
                lease_secs: 30,
            },
            Request::Renew {
                lease_id: u64::MAX,
                lease_secs: 1,
            },
        ] {
            assert_eq!(decode::<Request>(&encode(&request)), Ok(request));
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let good = encode(&Request::Ping);
        let mut wrong_version = good.clone();
        wrong_version[4] = 9;
        assert_eq!(
            decode::<Request>(&wrong_version),
            Err(ControlError::Version {
                found: 9,
                supported: PROTOCOL_VERSION
            })
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Request>(&trailing),
            Err(ControlError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&good[..7]),
            Err(ControlError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&vec![0; MAX_MESSAGE + 1]),
            Err(ControlError::Malformed(_))
        ));
    }
}
