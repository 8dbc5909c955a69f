//! The Unix-socket server: root-only (mode 0600 and an `SO_PEERCRED` check), one request
//! per connection, bounded request size.
//!
//! Each connection is served on one blocking thread from accept to reply (no hand-off to
//! another thread: that is what a publish costs least with). A few threads wait in
//! `accept`; when a thread takes a connection and none is left waiting, it starts another
//! first, so an operation stuck in the kernel never keeps the next request waiting. Spare
//! threads beyond a few exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{Request, Response};
use crate::daemon::executor::{Answer, Executor};
use crate::flexvolume::Reply;

/// Largest request accepted (options with secrets fit easily).
pub const MAX_REQUEST: u64 = 1 << 20;
/// Threads kept waiting in `accept`.
const SPARE_THREADS: usize = 3;

struct Shared {
    listener: UnixListener,
    socket: PathBuf,
    exec: Arc<Executor>,
    me: u32,
    accepting: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; [`Server::stop`] ends it.
pub struct Server {
    shared: Arc<Shared>,
}

/// Starts serving `listener` (bound at `socket`) on blocking threads.
pub fn serve(
    listener: UnixListener,
    socket: PathBuf,
    exec: Arc<Executor>,
) -> std::io::Result<Server> {
    let shared = Arc::new(Shared {
        listener,
        socket,
        exec,
        me: nix::unistd::geteuid().as_raw(),
        accepting: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    for _ in 0..SPARE_THREADS {
        spawn_thread(&shared)?;
    }
    Ok(Server { shared })
}

fn spawn_thread(shared: &Arc<Shared>) -> std::io::Result<()> {
    let sh = shared.clone();
    std::thread::Builder::new()
        .name("moor-conn".into())
        .spawn(move || work(&sh))
        .map(drop)
}

impl Server {
    /// Stops accepting: threads waiting in `accept` are woken and exit; a connection that
    /// arrives meanwhile is answered "shutting down". Operations in progress go on (the
    /// executor's drain waits for them). Blocking, briefly.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for _ in 0..400 {
            let waiting = self.shared.accepting.load(Ordering::SeqCst);
            if waiting == 0 {
                return;
            }
            // Each connection wakes one thread blocked in accept.
            for _ in 0..waiting {
                let _ = UnixStream::connect(&self.shared.socket);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!("server threads did not all stop");
    }
}

fn work(sh: &Arc<Shared>) {
    loop {
        sh.accepting.fetch_add(1, Ordering::SeqCst);
        let accepted = sh.listener.accept();
        let left = sh.accepting.fetch_sub(1, Ordering::SeqCst) - 1;
        if sh.stop.load(Ordering::SeqCst) {
            if let Ok((stream, _)) = accepted {
                connection(stream, sh, true);
            }
            return;
        }
        if left == 0
            && let Err(e) = spawn_thread(sh)
        {
            tracing::warn!(error = %e, "cannot start a connection thread");
        }
        match accepted {
            Ok((stream, _)) => connection(stream, sh, false),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of descriptors or memory: do not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if sh.accepting.load(Ordering::SeqCst) >= SPARE_THREADS {
            return;
        }
    }
}

fn connection(stream: UnixStream, sh: &Shared, stopping: bool) {
    let uid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
        .ok();
    // The request is read even from a peer about to be refused, so it gets its answer
    // instead of a broken pipe.
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
    let answer = Answer::new(move |resp: &Response| {
        let mut out = serde_json::to_vec(resp).unwrap_or_default();
        out.push(b'\n');
        if let Err(e) = (&stream).write_all(&out) {
            tracing::warn!(error = %e, "client went away before the answer");
        }
    });
    if stopping {
        if matches!(read, Ok(n) if n > 0) {
            answer.send(&failure("moor daemon is shutting down; retry".into()));
        }
        return;
    }
    if uid != Some(0) && uid != Some(sh.me) {
        tracing::warn!(peer_uid = ?uid, "refused a client that is neither root nor moor's user");
        answer.send(&failure(
            "permission denied: only root may talk to moor".into(),
        ));
        return;
    }
    match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()))
    {
        Ok(req) => sh.exec.handle(req, &answer),
        Err(e) => answer.send(&failure(format!("bad_request: {e}"))),
    }
}

fn failure(message: String) -> Response {
    Response::Flex {
        reply: Reply::failure(message),
    }
}
