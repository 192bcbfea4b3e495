//! A TCP proxy a test puts in front of a server to lose the network under a
//! client the unkind way. `blackhole` keeps every connection open and keeps
//! accepting new ones, reads what both sides send and forwards none of it,
//! so requests neither fail nor get an answer. `restore` closes every
//! connection opened so far and forwards normally again.
//!
//! A connection never goes from swallowing to forwarding: bytes after a
//! swallowed one would start mid-request, and a request swallowed whole
//! could be followed by a retry the test did not mean to let through. So
//! each connection belongs to the generation it was opened in, `blackhole`
//! silences the current generation and `restore` closes it and starts a
//! new one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestProxy {
    pub addr: SocketAddr,
    current: Arc<Mutex<Generation>>,
    accepting: JoinHandle<()>,
}

/// The connections opened between two `restore`s.
#[derive(Clone, Default)]
struct Generation {
    closed: CancellationToken,
    blackholed: Arc<AtomicBool>,
}

impl TestProxy {
    /// Listens on `addr` and forwards each connection to `upstream`, which
    /// need not be listening yet.
    pub async fn start(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the proxy on {addr}: {err}"));
        let addr = listener.local_addr().expect("proxy addr");
        let current = Arc::new(Mutex::new(Generation::default()));
        let accepting = tokio::spawn(accept(listener, upstream, Arc::clone(&current)));
        Self {
            addr,
            current,
            accepting,
        }
    }

    /// Forwards nothing more on any connection, open or still to come,
    /// while keeping them open and reading from them.
    pub fn blackhole(&self) {
        self.generation().blackholed.store(true, Ordering::SeqCst);
    }

    /// Closes every connection opened so far; later ones are forwarded.
    pub fn restore(&self) {
        let previous = std::mem::take(&mut *self.current.lock().expect("proxy state"));
        previous.closed.cancel();
    }

    fn generation(&self) -> Generation {
        self.current.lock().expect("proxy state").clone()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.generation().closed.cancel();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, current: Arc<Mutex<Generation>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let generation = current.lock().expect("proxy state").clone();
        tokio::spawn(relay(client, upstream, generation));
    }
}

/// Carries one connection both ways until either side closes it or its
/// generation is closed.
async fn relay(client: TcpStream, upstream: SocketAddr, generation: Generation) {
    let server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(_) => return,
        },
        () = generation.closed.cancelled() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pipe(client_read, server_write, &generation.blackholed) => {}
        () = pipe(server_read, client_write, &generation.blackholed) => {}
        () = generation.closed.cancelled() => {}
    }
}

/// Copies `from` to `to`, or reads and drops while `blackholed`.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, blackholed: &AtomicBool) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if blackholed.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
