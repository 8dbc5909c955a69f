//! The Unix-socket server: root-only (mode 0600 and an `SO_PEERCRED` check), one request
//! per connection, bounded request size.
//!
//! Each connection is served on one blocking thread from accept to reply (no hand-off to
//! another thread: that is what a publish costs least with). A few threads wait in
//! `accept`; when a thread takes a connection and none is left waiting, it starts another
//! first, so an operation stuck in the kernel never keeps the next request waiting. Spare
//! threads beyond a few exit.
//!
//! Bounds: at most [`MAX_THREADS`] connection threads live at once; past that, new
//! connections wait in the kernel's accept queue until a thread is free (a client waits, it
//! is never refused). A client has [`REQUEST_DEADLINE`] to send its request line, and only
//! [`BUSY_REQUEST_DEADLINE`] while every thread is taken, so idle connections never keep a
//! real call waiting for long.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Answer, Failure, Handler, Request, Response};

/// Largest request accepted (options with secrets fit easily).
pub const MAX_REQUEST: u64 = 1 << 20;
/// Threads kept waiting in `accept`.
const SPARE_THREADS: usize = 3;
/// Connection threads alive at once, at most (operations run in parallel up to this).
pub const MAX_THREADS: usize = 64;
/// How long a client has to send its request line (the front end sends it right after
/// connecting).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// When every connection thread is taken, how long a connection may stay silent before its
/// thread goes to the next one: a real client wrote its request right after connecting, long
/// before a thread took it from the accept queue.
pub const BUSY_REQUEST_DEADLINE: Duration = Duration::from_millis(200);
/// How often a silent connection checks whether others are waiting for its thread.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// How long writing an answer may block on a client that does not read it.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

struct Shared {
    listener: UnixListener,
    socket: PathBuf,
    handler: Arc<dyn Handler>,
    me: u32,
    accepting: AtomicUsize,
    threads: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; [`Server::stop`] ends it.
pub struct Server {
    shared: Arc<Shared>,
}

/// Starts serving `listener` (bound at `socket`) on blocking threads; each request goes
/// to `handler`.
pub fn serve(
    listener: UnixListener,
    socket: PathBuf,
    handler: Arc<dyn Handler>,
) -> std::io::Result<Server> {
    let shared = Arc::new(Shared {
        listener,
        socket,
        handler,
        me: crate::host::process::euid(),
        accepting: AtomicUsize::new(0),
        threads: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    for _ in 0..SPARE_THREADS {
        spawn_thread(&shared)?;
    }
    Ok(Server { shared })
}

/// Starts one more connection thread unless [`MAX_THREADS`] are alive (then the caller's
/// connection and the next ones wait in the accept queue).
fn spawn_thread(shared: &Arc<Shared>) -> std::io::Result<()> {
    if shared
        .threads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_THREADS).then_some(n + 1)
        })
        .is_err()
    {
        return Ok(());
    }
    let sh = shared.clone();
    std::thread::Builder::new()
        .name("moor-conn".into())
        .spawn(move || {
            work(&sh);
            sh.threads.fetch_sub(1, Ordering::SeqCst);
        })
        .map(drop)
        .inspect_err(|_| {
            shared.threads.fetch_sub(1, Ordering::SeqCst);
        })
}

impl Server {
    /// Stops accepting: threads waiting in `accept` are woken and exit; a connection that
    /// arrives meanwhile is answered "shutting down". Operations in progress go on (the
    /// daemon drains them). Blocking, briefly.
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
    let uid = crate::host::process::peer_credentials(&stream)
        .map(|c| c.uid)
        .ok();
    // The request is read even from a peer about to be refused, so it gets its answer
    // instead of a broken pipe.
    let busy = || sh.threads.load(Ordering::SeqCst) >= MAX_THREADS;
    let read = read_request(&stream, &busy);
    if let Err(e) = stream.set_write_timeout(Some(ANSWER_DEADLINE)) {
        tracing::warn!(error = %e, "cannot bound the answer's write");
    }
    let answer = Answer::new(move |resp: &Response| {
        let mut out = serde_json::to_vec(resp).unwrap_or_default();
        out.push(b'\n');
        if let Err(e) = (&stream).write_all(&out) {
            tracing::warn!(error = %e, "client went away before the answer");
        }
    });
    if stopping {
        if matches!(&read, Ok(line) if !line.is_empty()) {
            answer.send(&refused("moor daemon is shutting down; retry"));
        }
        return;
    }
    if uid != Some(0) && uid != Some(sh.me) {
        tracing::warn!(peer_uid = ?uid, "refused a client that is neither root nor moor's user");
        answer.send(&refused("permission denied: only root may talk to moor"));
        return;
    }
    match read.and_then(|line| serde_json::from_slice::<Request>(&line).map_err(|e| e.to_string()))
    {
        Ok(req) => sh.handler.handle(req, &answer),
        Err(e) => {
            tracing::debug!(error = %e, "bad request");
            answer.send(&Response::Failed(Failure::labelled("bad_request", e)));
        }
    }
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, within [`REQUEST_DEADLINE`], or
/// within [`BUSY_REQUEST_DEADLINE`] once `busy()` (every thread taken). An empty line means
/// the peer closed without sending anything.
fn read_request(stream: &UnixStream, busy: &dyn Fn() -> bool) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let deadline = started + REQUEST_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no request line within {REQUEST_DEADLINE:?}"));
        }
        stream
            .set_read_timeout(Some(left.min(IDLE_CHECK)))
            .map_err(|e| e.to_string())?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if started.elapsed() >= BUSY_REQUEST_DEADLINE && busy() {
                    return Err(format!(
                        "no request line within {BUSY_REQUEST_DEADLINE:?} while the daemon is busy"
                    ));
                }
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let got = &chunk[..n];
        let end = got.iter().position(|b| *b == b'\n');
        buf.extend_from_slice(&got[..end.unwrap_or(n)]);
        if buf.len() as u64 > MAX_REQUEST {
            return Err(format!("request larger than {} KiB", MAX_REQUEST >> 10));
        }
        if n == 0 || end.is_some() {
            return Ok(buf);
        }
    }
}

fn refused(message: &str) -> Response {
    Response::Failed(Failure::refused(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// Answers each request with what it was asked, so a test sees what reached it.
    struct Echo;

    impl Handler for Echo {
        fn handle(&self, req: Request, answer: &Arc<Answer>) {
            answer.send(&Response::Failed(Failure::labelled("echo", req.op())));
        }
    }

    fn raw(socket: &std::path::Path, line: &[u8]) -> serde_json::Value {
        let mut s = UnixStream::connect(socket).unwrap();
        s.write_all(line).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[test]
    fn requests_reach_the_handler_and_bad_lines_get_a_typed_failure() {
        let t = tempfile::tempdir().unwrap();
        let socket = t.path().join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = serve(listener, socket.clone(), Arc::new(Echo)).unwrap();
        let answer = crate::api::client::call(&socket, &Request::Status, Duration::from_secs(5));
        assert_eq!(
            answer.unwrap(),
            Response::Failed(Failure::labelled("echo", "status"))
        );
        let v = raw(&socket, b"{\"op\":\"frobnicate\"}\n");
        assert_eq!(v["kind"], "failed", "{v}");
        assert_eq!(v["reason"], "bad_request", "{v}");
        server.stop();
    }
}
