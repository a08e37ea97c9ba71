//! Wiring (step 1's threads): the proxy port served by one current-thread runtime per
//! core, each accepting on its own `SO_REUSEPORT` listener.
//!
//! `listen.workers` runtimes serve the proxy's connections (default: one per core the
//! process may use). The runtime that calls [`super::Server::run`] is one of them;
//! [`Workers`] starts the others, each a current-thread runtime on a thread of its own
//! (`sluice-worker-N`). Each runtime accepts on its own listening socket, all bound to
//! the same address with `SO_REUSEPORT`, so the kernel spreads new connections over them
//! (by a hash of the client's address and port) and a connection's every wake-up runs
//! on the thread that accepted it. That is how NGINX's workers run: no task moves
//! between cores, no worker wakes another to hand it work. Against tokio's
//! work-stealing runtime it measured 5–10 % less proxy CPU per handshake and per relayed
//! round trip, and a lower single-connection latency (docs/benchmarks.md, issue 16).
//!
//! What the runtimes share is what every connection shared before: the tenant table,
//! admission (its gates are atomics and short locks; a queued client on one runtime is
//! woken from another through its waker), metrics, the drain's state. Timers are each
//! runtime's own. Background work (the admin listener, reloads, the cluster's link, a
//! tenant's queue pump) runs where it was started, mostly on the calling runtime.
//!
//! A runtime's tasks all run on its one thread, so a task that computes for long delays
//! the other connections of that runtime (never of another): nothing on the proxy path
//! blocks or computes for long, and the admin listener's heavier answers (`/metrics`,
//! `/api/tenants`) run on the calling runtime's thread.
//!
//! Before binding the group, the address is bound once without `SO_REUSEPORT`: a port
//! another process listens on is refused ("address in use") as it was with one listener,
//! instead of a second sluice silently sharing the port with the first.

use std::io;
use std::net::SocketAddr;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// The runtimes [`super::Server`] starts beside the calling one: each is stopped (and its
/// remaining tasks dropped) when this is dropped.
pub(super) struct Workers {
    handles: Vec<Handle>,
    /// `true` stops every worker.
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `n` current-thread runtimes, each on a thread of its own.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be made (the ones already started stop).
    pub(super) fn start(n: usize) -> io::Result<Self> {
        let (stop, _) = watch::channel(false);
        let mut workers = Self {
            handles: Vec::with_capacity(n),
            stop,
        };
        for i in 1..=n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let mut stop = workers.stop.subscribe();
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    let _memory = crate::release::memory::worker(rt.handle());
                    rt.block_on(async move {
                        // Err: the sender is gone, which stops us too.
                        let _ = stop.wait_for(|stop| *stop).await;
                    });
                    // Dropping `rt` here drops what is left of its tasks.
                })?;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// The workers' runtimes.
    pub(super) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// How many runtimes serve the proxy port when `listen.workers` is not set: one per core
/// this process may use (cgroup quotas and affinity included).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// `n` listeners on `addr` (port 0: the port the OS chose, the same for all), each with
/// a backlog of [`super::LISTEN_BACKLOG`] and `TCP_NODELAY` for the sockets it accepts; with more than one, `SO_REUSEPORT` groups
/// them after a first bind without it has checked that no other process holds the
/// address. Not registered with any runtime yet (each worker takes its own).
pub(super) fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = if n > 1 {
        // Refused if anyone listens there, with or without SO_REUSEPORT.
        let probe = socket(addr)?;
        probe.bind(&addr.into())?;
        probe
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound address is not an IP address"))?
    } else {
        addr
    };
    (0..n)
        .map(|_| {
            let socket = socket(addr)?;
            if n > 1 {
                socket.set_reuse_port(true)?;
            }
            // Accepted sockets inherit TCP_NODELAY from their listener on Linux, which
            // saves a `setsockopt` per connect (signaling is small and latency-bound).
            socket.set_tcp_nodelay(true)?;
            socket.bind(&addr.into())?;
            socket.listen(super::LISTEN_BACKLOG as i32)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .collect()
}

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` (as tokio's `TcpListener::bind`
/// sets it: a restart binds while old connections are in TIME_WAIT).
fn socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy never sets TCP_NODELAY on an accepted socket itself (Linux): what a
    /// client's socket gets is what the listener gave it, for one listener and for a
    /// `SO_REUSEPORT` group.
    #[test]
    fn accepted_sockets_have_nodelay_from_their_listener() {
        for n in [1, 2] {
            let listeners = bind_group("127.0.0.1:0".parse().unwrap(), n).unwrap();
            let addr = listeners[0].local_addr().unwrap();
            let mut accepted = 0;
            // With a group the kernel picks the listener (the listeners are
            // non-blocking): connect until as many were accepted as there are listeners.
            let mut clients = Vec::new();
            for _ in 0..200 {
                clients.push(std::net::TcpStream::connect(addr).unwrap());
                for listener in &listeners {
                    if let Ok((tcp, _)) = listener.accept() {
                        assert!(
                            tcp.nodelay().unwrap(),
                            "an accepted socket without TCP_NODELAY"
                        );
                        accepted += 1;
                    }
                }
                if accepted >= n {
                    break;
                }
            }
            assert!(accepted >= n, "{accepted} of {n} listeners accepted");
        }
    }
}
