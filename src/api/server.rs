//! The Unix-socket server: root-only (mode 0600 and an `SO_PEERCRED` check), one request
//! per connection, bounded request size.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Request, Response};
use crate::daemon::executor::Executor;
use crate::flexvolume::Reply;

/// Largest request accepted (options with secrets fit easily).
const MAX_REQUEST: u64 = 1 << 20;

/// Accepts connections until `stop` fires.
pub async fn serve(
    listener: UnixListener,
    exec: Arc<Executor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let exec = exec.clone();
                    tokio::spawn(async move { connection(stream, exec, me).await });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = stop.changed() => break,
        }
    }
}

async fn connection(stream: UnixStream, exec: Arc<Executor>, me: u32) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (rd, mut wr) = stream.into_split();
    // The request is read even from a peer about to be refused, so it gets its answer
    // instead of a broken pipe.
    let mut line = String::new();
    let read = BufReader::new(rd.take(MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let resp = if uid != Some(0) && uid != Some(me) {
        tracing::warn!(peer_uid = ?uid, "refused a client that is neither root nor moor's user");
        failure("permission denied: only root may talk to moor".into())
    } else {
        match read
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()))
        {
            Ok(req) => exec.handle(req).await,
            Err(e) => failure(format!("bad_request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    if let Err(e) = wr.write_all(&out).await {
        tracing::warn!(error = %e, "client went away before the answer");
    }
}

fn failure(message: String) -> Response {
    Response::Flex {
        reply: Reply::failure(message),
    }
}
