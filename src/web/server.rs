//! The HTTP server in front of the router, with the limits that keep an inbound flood from
//! starving the engine: a connection cap (the rest wait in the kernel's accept queue, holding no
//! file descriptor of ours), a header-read timeout, an idle keep-alive timeout, and (in
//! [`limit_body`]) a body timeout and size limit.
//!
//! The cap is lowered at start-up when the process's file-descriptor limit would not leave
//! [`reserved_fds`] descriptors for the engine's own SmartVPS calls, database connections and
//! notices, so idle sockets can never make a stock read fail with "Too many open files" and cost
//! an order a buy attempt.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::config::ServerSettings;

/// What the server allows one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (after [`effective_max_connections`]).
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed as soon as they are
    /// accepted, so one address cannot fill every slot and the accept queue behind them.
    pub max_connections_per_client: usize,
    /// Limit on receiving a request's headers, from when the connection is ready for it.
    pub header_timeout: Duration,
    /// Limit on receiving a request's body.
    pub body_timeout: Duration,
    /// Limit on a connection with no request in progress and no bytes moving.
    pub idle_timeout: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (see [`client_of`]).
    pub trusted_proxies: Arc<[IpAddr]>,
}

impl Limits {
    /// The limits of the settings, with the connection cap as configured.
    pub fn of(s: &ServerSettings) -> Self {
        Self {
            max_connections: s.max_connections,
            max_connections_per_client: s.max_connections_per_client,
            header_timeout: s.header_timeout,
            body_timeout: s.body_timeout,
            idle_timeout: s.idle_timeout,
            max_body_bytes: s.max_body_bytes,
            trusted_proxies: s.trusted_proxies.iter().copied().collect(),
        }
    }
}

/// The client a request comes from: the TCP peer, or, when the peer is a trusted proxy, the
/// last address in `X-Forwarded-For` (every header line, in order) that is not a trusted proxy
/// itself. Proxies append the address they received from, so entries to the left of the last
/// untrusted one were written by the client and prove nothing; an entry that is not an IP
/// address stops the walk at the proxy.
pub fn client_of(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut client = peer;
    for entry in entries.rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// File descriptors kept back from inbound connections: two per order the worker drives at once
/// (a SmartVPS call and a spare for a reconnect), plus the database pool, the notifier's
/// connections, the listener, logs and the runtime's own.
pub fn reserved_fds(worker_concurrency: usize) -> usize {
    128 + 2 * worker_concurrency
}

/// The soft limit on open files of this process, from `/proc/self/limits` (Linux); `None`
/// elsewhere or when unlimited.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap to serve with: the configured one, lowered so that `reserved` descriptors
/// stay free under the process's open-files limit.
pub fn effective_max_connections(
    configured: usize,
    limit: Option<usize>,
    reserved: usize,
) -> usize {
    match limit {
        Some(limit) => configured.min(limit.saturating_sub(reserved)).max(1),
        None => configured,
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Connections held per client address; a std mutex, nothing is awaited under it.
    let per_client: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A slot first, then accept: beyond the cap, clients wait in the kernel's queue.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin; the reserve keeps
                    // the engine's own calls clear of this.
                    tracing::warn!("accepting a connection failed: {e}");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let client = peer.ip();
        // A trusted proxy carries many clients on its connections: it is not capped as one.
        if !limits.trusted_proxies.contains(&client) {
            let mut held = per_client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = held.entry(client).or_insert(0);
            if *n >= limits.max_connections_per_client {
                // Closed at once: the slot and the accept queue stay free for other clients.
                metrics::counter!("provisioner_http_connections_refused_total").increment(1);
                drop(stream);
                drop(permit);
                continue;
            }
            *n += 1;
        }
        let per_client_done = Arc::clone(&per_client);
        let (router, shutdown, open) = (router.clone(), shutdown.clone(), Arc::clone(&open));
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("provisioner_http_connections").set(open.load(Ordering::Relaxed) as f64);
        let limits = limits.clone();
        connections.spawn(async move {
            connection(stream, peer, router, limits, shutdown).await;
            {
                let mut held = per_client_done
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(n) = held.get_mut(&client) {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(&client);
                    }
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("provisioner_http_connections")
                .set(open.load(Ordering::Relaxed) as f64);
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    // Requests in progress finish (each connection shuts down gracefully on the same token).
    while connections.join_next().await.is_some() {}
}

/// One connection: HTTP/1.1 with keep-alive, the header timeout, and the idle watchdog.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        activity: Arc::clone(&activity),
    });
    let requests = Arc::clone(&in_flight);
    let trusted = Arc::clone(&limits.trusted_proxies);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let client = client_of(peer.ip(), req.headers(), &trusted);
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        let mut router = router.clone();
        let guard = InFlight::enter(&requests);
        async move {
            let response = router.call(req.map(Body::new)).await;
            drop(guard);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let idle_deadline = last + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, "connection closed: {e}");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
                if in_flight.load(Ordering::Relaxed) == 0 && last + limits.idle_timeout <= Instant::now() {
                    tracing::debug!(client = %peer, "idle connection closed");
                    return;
                }
            }
        }
    }
}

/// Counts a request as in progress until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when bytes last moved, for the idle watchdog.
struct Tracked {
    inner: TcpStream,
    started: Instant,
    /// Milliseconds after `started` of the last read or write that moved bytes.
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The body limits the middleware applies.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Limit on receiving the body.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
}

/// Reads the whole request body within the body timeout and size limit before any handler runs:
/// 408 for a body sent too slowly, 413 for one too large. Every body this API takes is small.
pub async fn limit_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            // A body over the limit is the client's to fix; anything else is a broken connection.
            return if e.into_inner().is::<http_body_util::LengthLimitError>() {
                too_large(limits.max_bytes)
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
                    .into_response()
            };
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(limits.timeout)
                ),
            )
                .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_last_untrusted_forwarded_address() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted = [proxy, inner];
        let headers = |values: &[&str]| {
            let mut h = axum::http::HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        // Not from a proxy: the header is the client's own words and is ignored.
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_of(stranger, &headers(&["203.0.113.9"]), &trusted),
            stranger
        );
        // From the proxy: the address it appended; what the client wrote before it is skipped.
        assert_eq!(
            client_of(proxy, &headers(&["1.2.3.4, 203.0.113.9"]), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Through two proxies, on two header lines.
        assert_eq!(
            client_of(
                proxy,
                &headers(&["1.2.3.4, 203.0.113.9", "10.0.0.2"]),
                &trusted
            ),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // No header, or garbage where the proxy's entry should be: the proxy itself.
        assert_eq!(client_of(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(client_of(proxy, &headers(&["unknown"]), &trusted), proxy);
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_engine() {
        let reserve = reserved_fds(32);
        assert_eq!(reserve, 192);
        assert_eq!(effective_max_connections(512, Some(1024), reserve), 512);
        assert_eq!(effective_max_connections(2048, Some(1024), reserve), 832);
        assert_eq!(effective_max_connections(512, Some(100), reserve), 1);
        assert_eq!(effective_max_connections(512, None, reserve), 512);
    }

    #[test]
    fn the_open_files_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
