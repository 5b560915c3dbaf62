//! The plumbing every simulator shares, so that the three of them start, fault, remember and
//! stop alike: the listener and HTTP server, the client that delivers callbacks and webhooks,
//! the shutdown signal, the background tasks, the remembered `traceparent`s, the front-door
//! faults and the redelivery loop.
//!
//! Each simulator keeps its own config, ledger, tokens, handlers and wire format; it owns one
//! [`Runtime`] and words the answers itself.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::Faults;
use crate::dice::Dice;
use crate::server::SandboxError;

/// How many received `traceparent` headers a sandbox remembers.
pub const MAX_TRACEPARENTS: usize = 10_000;

/// (path, traceparent) of the requests that carried one, the most recent [`MAX_TRACEPARENTS`].
type Traceparents = Arc<Mutex<VecDeque<(String, String)>>>;

/// What a running simulator's handlers and background tasks share besides its own state.
pub(crate) struct Runtime {
    /// Delivers callbacks and webhooks.
    http: reqwest::Client,
    /// Background tasks, which shutdown waits for.
    tasks: TaskTracker,
    /// Turns true on shutdown; the sender going away (a dropped handle) counts as well.
    shutdown: watch::Receiver<bool>,
    /// Kept so tests can see that payoutd propagates its trace context.
    traceparents: Traceparents,
    /// Callbacks and webhooks in flight at once. A real provider delivers with bounded
    /// concurrency; without a bound, a receiver slower than the payouts finishing would have
    /// the sandbox open a connection per waiting delivery (thousands, until file descriptors
    /// run out).
    deliveries: tokio::sync::Semaphore,
}

/// Most callbacks and webhooks one sandbox has in flight at once.
const MAX_DELIVERIES_IN_FLIGHT: usize = 32;

/// A bound listener that does not serve yet: the simulator's state is built in between,
/// because its router needs it.
pub(crate) struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Listener {
    /// The address actually bound (port 0 picks a free port).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The HTTP server of a running simulator, kept by its handle.
#[derive(Debug)]
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Binds `bind`, then builds the delivery client (POSTs time out after `delivery_timeout`)
/// and the shutdown signal.
pub(crate) async fn bind(
    bind: SocketAddr,
    delivery_timeout: Duration,
) -> Result<(Runtime, Listener), SandboxError> {
    let listener =
        TcpListener::bind(bind).await.map_err(|source| SandboxError::Bind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind { addr: bind, source })?;
    let http = reqwest::Client::builder()
        .timeout(delivery_timeout)
        // Deliveries go to a local receiver; an environment proxy must not reroute them.
        .no_proxy()
        .build()
        .map_err(|e| SandboxError::Client(e.without_url().to_string()))?;
    let (stop, shutdown) = watch::channel(false);
    let runtime = Runtime {
        http,
        tasks: TaskTracker::new(),
        shutdown,
        traceparents: Arc::default(),
        deliveries: tokio::sync::Semaphore::new(MAX_DELIVERIES_IN_FLIGHT),
    };
    Ok((runtime, Listener { listener, addr, stop }))
}

impl Runtime {
    /// Serves `app` on `listener` until shutdown, remembering the `traceparent` of every
    /// request first.
    pub(crate) fn serve(&self, listener: Listener, app: Router) -> Server {
        let app =
            app.layer(axum::middleware::from_fn_with_state(self.traceparents.clone(), note_traceparent));
        let mut signal = self.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener.listener, app)
                .with_graceful_shutdown(async move {
                    // Ends on the signal, or when the handle is dropped.
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await
        });
        Server { stop: listener.stop, task }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Waits for a delivery slot; hold it for the whole delivery (request and answer).
    pub(crate) async fn delivery_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.deliveries.acquire().await.ok()
    }

    /// (path, traceparent) of the requests that carried a `traceparent`, oldest first.
    pub(crate) fn traceparents(&self) -> Vec<(String, String)> {
        self.traceparents.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    /// Sleeps for `duration`; false if the sandbox is shutting down first.
    pub(crate) async fn sleep(&self, duration: Duration) -> bool {
        self.unless_shutdown(tokio::time::sleep(duration)).await.is_some()
    }

    /// Runs `work` unless shutdown comes first (`None` then).
    pub(crate) async fn unless_shutdown<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        unless_shutdown(self.shutdown.clone(), work).await
    }

    /// Runs a background task that shutdown waits for.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs `task` in the background and waits for it to end. For a provider's work inside a
    /// request, such as an early callback: the request's own future is dropped when the client
    /// hangs up (a client timeout), and a real provider would not lose the callback because of that.
    pub(crate) async fn spawn_and_wait(&self, task: impl Future<Output = ()> + Send + 'static) {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.spawn(async move {
            task.await;
            let _ = done.send(());
        });
        let _ = finished.await;
    }

    /// Runs `task` in the background after `delay`, unless shutdown comes first: how a
    /// simulator finishes a payout after its processing delay.
    pub(crate) fn spawn_after(&self, delay: Duration, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.spawn(async move {
            if unless_shutdown(shutdown, tokio::time::sleep(delay)).await.is_some() {
                task.await;
            }
        });
    }

    /// Redelivers: after each delay of `schedule`, `attempt` again, until it reports that the
    /// delivery is done. True if the schedule ran out first; shutdown ends it early and quietly
    /// (false).
    pub(crate) async fn redeliver<A: Future<Output = bool>>(
        &self,
        schedule: Vec<Duration>,
        mut attempt: impl FnMut() -> A,
    ) -> bool {
        for delay in schedule {
            if !self.sleep(delay).await {
                return false;
            }
            if attempt().await {
                return false;
            }
        }
        true
    }
}

impl Server {
    /// Stops accepting requests, ends pending sleeps and delivery schedules, and waits until
    /// the server and every background task of `runtime` are done.
    pub(crate) async fn shutdown(self, runtime: &Runtime) -> Result<(), SandboxError> {
        let _ = self.stop.send(true);
        let served = self.task.await;
        runtime.tasks.close();
        runtime.tasks.wait().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SandboxError::Serve(e)),
            Err(e) => Err(SandboxError::Task(e.to_string())),
        }
    }
}

async fn unless_shutdown<T>(mut shutdown: watch::Receiver<bool>, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}

fn remember(traceparents: &Mutex<VecDeque<(String, String)>>, path: &str, traceparent: &str) {
    let mut seen = traceparents.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.len() >= MAX_TRACEPARENTS {
        seen.pop_front();
    }
    seen.push_back((path.to_owned(), traceparent.to_owned()));
}

/// Remembers the `traceparent` a request carried (the real providers ignore extra headers).
async fn note_traceparent(
    State(traceparents): State<Traceparents>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(traceparent) = request.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        remember(&traceparents, request.uri().path(), traceparent);
    }
    next.run(request).await
}

/// Why the front door turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnedAway {
    /// Shutdown cut the latency fault's wait short: 503.
    ShuttingDown,
    /// The rate-limit fault: 429.
    RateLimited,
    /// The 5xx fault: 500.
    ServerError,
}

/// The front-door faults, which act before anything is read, like a proxy or rate limiter in
/// front of the real API would: latency, then 429 or 5xx by their rates. `answer` counts the
/// refusal and words it in the simulator's format; a 429 gets `Retry-After: 1` here, so every
/// simulator tells clients alike when to come back. `Some` is the answer to give instead.
pub(crate) async fn front_door(
    runtime: &Runtime,
    dice: &Dice,
    faults: &Faults,
    answer: impl FnOnce(TurnedAway) -> Response,
) -> Option<Response> {
    let latency = dice.up_to(faults.max_latency);
    let turned = if !latency.is_zero() && !runtime.sleep(latency).await {
        TurnedAway::ShuttingDown
    } else if dice.roll(faults.rate_limit_rate) {
        TurnedAway::RateLimited
    } else if dice.roll(faults.error_5xx_rate) {
        TurnedAway::ServerError
    } else {
        return None;
    };
    let mut response = answer(turned);
    if turned == TurnedAway::RateLimited {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Some(response)
}

/// The bare page a web server in front of an API answers a 500 with.
pub(crate) fn html_500() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "<html><body>Internal Server Error</body></html>").into_response()
}
