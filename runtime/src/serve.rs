//! The supervisor's event loop: one thread polls the control socket, every
//! connection and every peer's pidfd, answers requests, and runs the
//! reaper between events.
//!
//! Nothing a client does can wedge the loop: sockets are non-blocking, one
//! message is read per ready connection per turn, a reply that does not fit
//! the client's buffer closes that connection, and every message is
//! decoded by code that returns errors for any input.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use grafos_worker::FabricError;
use grafos_worker::control::MAX_MESSAGE;
use grafos_worker::drain::Drain;
use grafos_worker::host::unix_time_ms;
use grafos_worker::process::ProcessId;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use crate::supervisor::{Ending, Peer, Supervisor};

/// How often the reaper runs when nothing else happens.
const REAPER_PERIOD: Duration = Duration::from_millis(50);
/// Connections served at once, at most (fewer if the file limit is low:
/// each takes a socket and a pidfd).
const MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept for everything else (segments, files, /proc).
const RESERVED_FDS: u64 = 64;
/// A connection that has not attached and sent nothing for this long is
/// closed, so idle clients cannot use up the connection slots.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long the listener rests after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the control socket at `path` (mode 0600, close-on-exec,
/// non-blocking), replacing a stale one.
///
/// # Errors
/// `Io` if it cannot be bound.
pub fn bind(path: &Path) -> Result<OwnedFd, FabricError> {
    let io = |op, e: rustix::io::Errno| FabricError::Io {
        op,
        target: path.display().to_string(),
        source: e.into(),
    };
    // The caller holds the instance lock, so a socket file here belongs to
    // a supervisor that died: replace it.
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!("replaced the stale socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FabricError::Io {
                op: "unlink",
                target: path.display().to_string(),
                source,
            });
        }
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| io("socket", e))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| io("socket path", e))?;
    rustix::net::bind(&fd, &addr).map_err(|e| io("bind", e))?;
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600)).map_err(|e| io("chmod", e))?;
    rustix::net::listen(&fd, 128).map_err(|e| io("listen", e))?;
    Ok(fd)
}

struct Connection {
    /// `None` once the peer hung up while its process still looked alive:
    /// a killed process closes its sockets before its pidfd turns
    /// readable, so the pidfd is watched a little longer to tell a death
    /// from a detach.
    socket: Option<OwnedFd>,
    /// The peer's pidfd: readable once the process has exited.
    pidfd: Option<OwnedFd>,
    peer: Peer,
    hung_up: Option<Instant>,
    last_message: Instant,
}

/// How long a hung-up participant's pidfd is watched before its departure
/// counts as a detach.
const DEPARTURE_WINDOW: Duration = Duration::from_secs(1);

/// Serves until a `Shutdown` request or, if `stop` is given, a stop
/// signal (SIGTERM, SIGINT), then shuts the supervisor down.
pub fn serve(mut supervisor: Supervisor, listener: OwnedFd, stop: Option<Drain>) {
    let max_connections = connection_limit();
    let mut connections: BTreeMap<u64, Connection> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut next_tick = Instant::now();
    let mut accept_paused_until = None;
    while !supervisor.finished() {
        if stop.is_some_and(|s| s.requested()) {
            supervisor.request_shutdown();
        }
        // The poll set: the listener (unless resting), then each
        // connection's socket and pidfd (whichever it has), by index.
        let listening = accept_paused_until.is_none_or(|t| Instant::now() >= t);
        let interest = if listening {
            PollFlags::IN
        } else {
            PollFlags::empty()
        };
        let mut fds = vec![PollFd::new(&listener, interest)];
        let mut slots = Vec::with_capacity(connections.len());
        for (&id, conn) in &connections {
            let [socket, pidfd] = [conn.socket.as_ref(), conn.pidfd.as_ref()].map(|fd| {
                let fd = fd?;
                fds.push(PollFd::new(fd, PollFlags::IN));
                Some(fds.len() - 1)
            });
            slots.push((id, socket, pidfd));
        }
        let workers: Vec<(usize, usize)> = match supervisor.group() {
            Some(group) => group
                .pidfds()
                .into_iter()
                .map(|(worker, fd)| {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                    (worker, fds.len() - 1)
                })
                .collect(),
            None => Vec::new(),
        };
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!("poll: {e}");
                break;
            }
        }
        let revents = |i: Option<usize>| i.map_or(PollFlags::empty(), |i| fds[i].revents());
        let listener_ready = !fds[0].revents().is_empty();
        let events: Vec<_> = slots
            .iter()
            .map(|&(id, socket, pidfd)| (id, revents(socket), !revents(pidfd).is_empty()))
            .collect();
        let exited_workers: Vec<usize> = workers
            .iter()
            .filter(|&&(_, at)| !fds[at].revents().is_empty())
            .map(|&(worker, _)| worker)
            .collect();
        drop(fds);
        if let Some(group) = supervisor.group() {
            for worker in exited_workers {
                group.child_exited(worker);
            }
        }
        for (id, socket, exited) in events {
            if exited {
                close(&mut supervisor, &mut connections, id);
            } else if !socket.is_empty() {
                serve_one(&mut supervisor, &mut connections, id, socket);
            }
        }
        if listening && listener_ready {
            let out_of_fds = accept_all(&listener, &mut connections, &mut next_id, max_connections);
            accept_paused_until = out_of_fds.then(|| Instant::now() + ACCEPT_BACKOFF);
        }
        let departed: Vec<u64> = connections
            .iter()
            .filter(|(_, c)| {
                c.hung_up.is_some_and(|t| t.elapsed() >= DEPARTURE_WINDOW)
                    || (c.peer.incarnation.is_none() && c.last_message.elapsed() >= IDLE_LIMIT)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in departed {
            close(&mut supervisor, &mut connections, id);
        }
        if Instant::now() >= next_tick {
            supervisor.tick(unix_time_ms());
            next_tick = Instant::now() + REAPER_PERIOD;
        }
    }
    drop(connections);
    supervisor.shut_down();
}

/// The most connections to serve: [`MAX_CONNECTIONS`], or fewer if the
/// file limit (raised to its hard maximum first) cannot cover two
/// descriptors each.
fn connection_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        limit.current = Some(maximum);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("RLIMIT_NOFILE stays as it is: {e}");
        }
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fit = files.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

/// Accepts every waiting connection; returns whether the process ran out
/// of file descriptors (the caller rests the listener).
fn accept_all(
    listener: &OwnedFd,
    connections: &mut BTreeMap<u64, Connection>,
    next: &mut u64,
    max_connections: usize,
) -> bool {
    loop {
        let socket = match rustix::net::accept_with(
            listener,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        ) {
            Ok(socket) => socket,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return false,
            Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                tracing::warn!("accept: {e}; not accepting for {ACCEPT_BACKOFF:?}");
                return true;
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                return false;
            }
        };
        if connections.len() >= max_connections {
            tracing::warn!("refused a connection: {max_connections} open already");
            continue;
        }
        let (pidfd, process) = match peer_identity(&socket) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("no peer identity ({e}); the connection may not attach");
                (None, None)
            }
        };
        *next += 1;
        connections.insert(
            *next,
            Connection {
                socket: Some(socket),
                pidfd,
                peer: Peer {
                    process,
                    incarnation: None,
                },
                hung_up: None,
                last_message: Instant::now(),
            },
        );
    }
}

fn serve_one(
    supervisor: &mut Supervisor,
    connections: &mut BTreeMap<u64, Connection>,
    id: u64,
    events: PollFlags,
) {
    let conn = connections.get_mut(&id).expect("polled connections exist");
    let Some(socket) = &conn.socket else {
        return;
    };
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let len = match rustix::net::recv(socket, &mut buf[..], RecvFlags::DONTWAIT | RecvFlags::TRUNC)
    {
        Ok((_, 0)) if events.intersects(PollFlags::HUP | PollFlags::ERR) => {
            return hang_up(supervisor, connections, id);
        }
        Ok((_, len)) => len,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
        Err(_) => return hang_up(supervisor, connections, id),
    };
    // With TRUNC, `len` is the message's real length: one longer than the
    // buffer reaches the decoder at the buffer's length, past the limit,
    // and is refused for it.
    let message = &buf[..len.min(buf.len())];
    conn.last_message = Instant::now();
    let reply = supervisor.handle_message(&mut conn.peer, message, unix_time_ms());
    if let Err(e) = rustix::net::send(socket, &reply, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
        tracing::warn!(connection = id, "reply not sent ({e}); closing");
        hang_up(supervisor, connections, id);
    }
}

/// The peer hung up (or misbehaved): a connection without a participant,
/// or whose process is gone, closes now; a participant that still looks
/// alive keeps its pidfd watched for [`DEPARTURE_WINDOW`].
fn hang_up(supervisor: &mut Supervisor, connections: &mut BTreeMap<u64, Connection>, id: u64) {
    let conn = connections.get_mut(&id).expect("hung-up connections exist");
    conn.socket = None;
    if conn.peer.incarnation.is_some() && conn.pidfd.is_some() && !gone(conn) {
        conn.hung_up = Some(Instant::now());
    } else {
        close(supervisor, connections, id);
    }
}

/// Whether the connection's process has exited. The pidfd decides: it
/// turns readable only once every thread has exited (`/proc` shows a
/// zombie leader while other threads still run); without one, `/proc`.
fn gone(conn: &Connection) -> bool {
    match &conn.pidfd {
        Some(pidfd) => exited(pidfd),
        None => conn.peer.process.is_some_and(|p| !p.is_alive()),
    }
}

/// Closes a connection; its participant, if any, ends: as dead if its
/// process is gone, as detached otherwise.
fn close(supervisor: &mut Supervisor, connections: &mut BTreeMap<u64, Connection>, id: u64) {
    let Some(conn) = connections.remove(&id) else {
        return;
    };
    if let Some(incarnation) = conn.peer.incarnation {
        let ending = if gone(&conn) {
            Ending::Died
        } else {
            Ending::Detached
        };
        supervisor.participant_ended(incarnation, ending, unix_time_ms());
    }
}

/// Whether a pidfd's process has exited (the fd polls readable).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// The connected peer's pidfd (`SO_PEERPIDFD`) and identity: its pid as
/// the pidfd names it, and its start time, read while the pidfd shows the
/// process alive (so a recycled pid cannot lend its start time).
fn peer_identity(socket: &OwnedFd) -> std::io::Result<(Option<OwnedFd>, Option<ProcessId>)> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut raw: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `raw` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut raw).cast(),
            &mut len,
        )
    };
    if rc != 0 || raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getsockopt succeeded, so `raw` is a fresh pidfd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let pid = pidfd_pid(&pidfd)?;
    let process = ProcessId::of(pid);
    if exited(&pidfd) {
        return Ok((Some(pidfd), None));
    }
    Ok((Some(pidfd), process))
}

/// The pid a pidfd names, from `/proc/self/fdinfo`.
fn pidfd_pid(pidfd: &OwnedFd) -> std::io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|pid| pid.trim().parse().ok())
        .filter(|&pid: &i64| pid > 0)
        .map(|pid| pid as u32)
        .ok_or_else(|| std::io::Error::other("no live pid in the pidfd's fdinfo"))
}
