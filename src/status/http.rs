//! The status listener, on hyper: `GET /readyz`, `/status`, `/metrics` and
//! `/explain/NAMESPACE/NAME`; JSON where the client's `Accept` asks for
//! `application/json`. Loopback by default (`[status] listen`). Requests
//! are bounded: headers in 8 KiB and 5 s, a whole connection in 10 s, at
//! most 64 connections at once, so a stuck or hostile client costs nothing.
//! The client half serves `vipd status` and `vipd explain`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};

use super::metrics::{self, Format};
use super::{Answer, Ask, Query};

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIME: Duration = Duration::from_secs(5);
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// hyper's smallest buffer: the request line and headers must fit.
const MAX_HEAD: usize = 8192;
/// `vipd status` and `vipd explain` read at most this much of an answer.
const MAX_ANSWER: usize = 16 << 20;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The local listener: everything.
    All,
    /// The metrics listener, on the node's address: `/metrics` only, so
    /// what a scraper's network reaches cannot reload vipd or read
    /// explanations of other tenants' Services.
    Metrics,
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, ask: mpsc::Sender<Ask>, scope: Scope) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match scope {
        Scope::All => info!(%addr, "status listener"),
        Scope::Metrics => info!(%addr, "metrics listener"),
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("status: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%from, "status: too many connections; closed");
            continue;
        };
        let ask = ask.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, ask.clone(), scope));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_TIME, conn).await {
                Err(_) => debug!(%from, "status: client too slow"),
                Ok(Err(e)) => debug!(%from, "status: {e}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

async fn handle(
    req: Request<Incoming>,
    ask: mpsc::Sender<Ask>,
    scope: Scope,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if scope == Scope::Metrics && path != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: this listener serves /metrics only\n".into(),
        ));
    }
    // A reload changes state: POST, so no prefetching client or crawler
    // of a GET triggers one.
    let want = if path == "/reload" {
        Method::POST
    } else {
        Method::GET
    };
    if req.method() != want {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            format!("only {want} here\n"),
        ));
    }
    if path == "/livez" {
        // The process answers: that is all liveness means.
        return Ok(reply(StatusCode::OK, TEXT, "alive\n".into()));
    }
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let json = accept.as_deref().is_some_and(|a| a.contains(JSON));
    let query = match query_of(path) {
        Ok(q) => q,
        Err((code, why)) => return Ok(reply(code, TEXT, why.into())),
    };
    let (tx, rx) = oneshot::channel();
    let got = match ask.send(Ask { query, reply: tx }).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(answer) = got else {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "vipd is stopping\n".into(),
        ));
    };
    Ok(render(answer, path, json, accept.as_deref()))
}

/// What a path asks the daemon, or the answer refusing it.
fn query_of(path: &str) -> Result<Query, (StatusCode, &'static str)> {
    Ok(match path {
        "/readyz" | "/status" | "/metrics" => Query::Report,
        "/reload" => Query::Reload,
        p if p.starts_with("/explain/") => {
            let key = &p["/explain/".len()..];
            if key.split('/').count() != 2 || key.split('/').any(str::is_empty) {
                return Err((StatusCode::BAD_REQUEST, "explain takes NAMESPACE/NAME\n"));
            }
            Query::Explain(key.to_string())
        }
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                "not found: try /readyz, /livez, /status, /metrics, /explain/NAMESPACE/NAME or POST /reload\n",
            ))
        }
    })
}

/// The daemon's answer as the client asked for it.
fn render(answer: Answer, path: &str, json: bool, accept: Option<&str>) -> Response<Full<Bytes>> {
    match (answer, path) {
        (Answer::Reloaded(r), _) => {
            // 409: the file was read and refused; the body says why.
            let code = if r.applied {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            match serde_json::to_string(&r) {
                Ok(j) if json => reply(code, JSON, j),
                _ => reply(code, TEXT, r.render()),
            }
        }
        (Answer::Explain(e), _) if json => reply(StatusCode::OK, JSON, e.json()),
        (Answer::Explain(e), _) => reply(StatusCode::OK, TEXT, e.render()),
        (Answer::Report(r), "/metrics") => {
            let f = Format::from_accept(accept);
            match metrics::encode(&r, f) {
                Ok(text) => reply(StatusCode::OK, f.content_type(), text),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            }
        }
        (Answer::Report(r), p) => {
            let code = if r.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            match (p, json) {
                ("/readyz", _) => match r.readiness() {
                    Ok(()) => reply(code, TEXT, "ready\n".into()),
                    Err(why) => reply(code, TEXT, format!("not ready: {why}\n")),
                },
                (_, true) => reply(code, JSON, r.json()),
                (_, false) => reply(code, TEXT, r.render()),
            }
        }
    }
}

/// `vipd status` and `vipd explain`: `GET path` from a running vipd.
/// Returns whether it answered 200, and the body.
pub fn fetch(addr: SocketAddr, path: &str, json: bool) -> Result<(bool, String), String> {
    call(addr, Method::GET, path, json)
}

/// `vipd reload`: `POST /reload`. Whether the configuration was applied,
/// and what the daemon said.
pub fn reload(addr: SocketAddr) -> Result<(bool, String), String> {
    call(addr, Method::POST, "/reload", false)
}

fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: bool,
) -> Result<(bool, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), get(addr, method, path, json))
            .await
            .map_err(|_| format!("{addr}: no answer within 10s"))?
    })
}

async fn get(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: bool,
) -> Result<(bool, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot reach vipd at {addr}: timed out"))?
        .map_err(|e| {
            format!("cannot reach vipd at {addr}: {e} (is it running, with [status] enabled?)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(ACCEPT, if json { JSON } else { TEXT })
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let code = res.status();
    let body = Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    match code {
        StatusCode::OK => Ok((true, text)),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => Ok((false, text)),
        c => Err(format!("{addr}: {c}: {}", text.trim_end())),
    }
}
