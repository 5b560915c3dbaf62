//! Issue 7: one payout is one trace, across a worker that is killed mid-way and another that
//! finishes the payout, with the spans collected by a real OTLP/HTTP receiver inside the test.
//!
//! The API (this process) and two `payoutd worker` processes (this test binary run again with
//! `--ignored --exact child_worker`, which runs the binary's own CLI code with the environment
//! it is given) export to the receiver through the standard `OTEL_*` variables. Worker A is
//! SIGKILLed while its submit call is in flight; worker B takes the payout over after the lease
//! expires and finishes it. Worker B exports with a 60 s batch delay, so its spans can only
//! arrive through the flush on shutdown (SIGTERM).
//!
//! Asserted: every span of the payout carries the trace id of the caller's `traceparent`; every
//! step ("process payouts", kind consumer) is a child of the stored trace context; provider calls
//! and transition writes are children of their step and carry the documented attributes; the
//! `traceparent` the sandbox received is that of the provider call span; the late callback's
//! span joins the trace; log lines inside a step carry trace id and payout id (human and JSON);
//! no secret in any span attribute or event, log line or metrics label; each worker serves
//! `/metrics` and probes on its admin listener; metrics go out over OTLP too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use payoutd_core::PayoutState;
use payoutd_sandbox::Faults;
use payoutd_tests::{AppOptions, PARTNER_SECRET, SERVICE_ID, TestApp, payout_body, send_callback};
use prost::Message;
use sqlx::postgres::PgConnectOptions;

// Within the production constraint: 3 s > request timeout (1) + lease (1.5) + margin (0.3),
// and the request timeout is shorter than the lease.
const STATUS_INTERVAL_SECS: f64 = 3.0;

/// Span kinds as OTLP numbers them.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;
const KIND_CONSUMER: i32 = 5;

#[derive(Debug, Clone)]
struct SpanRec {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    attributes: BTreeMap<String, String>,
    /// Attributes of the span's events (log events inside the span), flattened.
    event_text: String,
    links: Vec<String>,
}

impl SpanRec {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<SpanRec>,
    metric_names: BTreeSet<String>,
}

type Shared = Arc<Mutex<Received>>;

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receive_traces(State(shared): State<Shared>, body: Bytes) -> &'static str {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else { return "" };
    let mut received = shared.lock().expect("lock");
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let event_text = span
                    .events
                    .iter()
                    .map(|e| format!("{} {:?}", e.name, attributes(&e.attributes)))
                    .collect::<Vec<_>>()
                    .join("\n");
                received.spans.push(SpanRec {
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    start: span.start_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    event_text,
                    links: span.links.iter().map(|l| hex(&l.span_id)).collect(),
                });
            }
        }
    }
    ""
}

async fn receive_metrics(State(shared): State<Shared>, body: Bytes) -> &'static str {
    let Ok(request) = ExportMetricsServiceRequest::decode(body) else { return "" };
    let mut received = shared.lock().expect("lock");
    for resource_metrics in request.resource_metrics {
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                received.metric_names.insert(metric.name);
            }
        }
    }
    ""
}

/// A URL for `options` that a child process can use as DATABASE_URL (no password: the test
/// servers trust local connections).
fn database_url(options: &PgConnectOptions) -> String {
    let db = options.get_database().unwrap_or("postgres");
    let host = options.get_host();
    if host.starts_with('/') {
        format!("postgres:///{db}?host={host}&port={}&user={}", options.get_port(), options.get_username())
    } else {
        format!("postgres://{}@{host}:{}/{db}", options.get_username(), options.get_port())
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct ChildSpec<'a> {
    service: &'a str,
    admin_port: u16,
    batch_delay_ms: u32,
    json_logs: bool,
    log: &'a Path,
}

/// A worker process that is killed if the test ends early (a failed assertion must not leave
/// workers polling a test database).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_worker(spec: &ChildSpec<'_>, database_url: &str, sandbox: &str, otlp: &str) -> Worker {
    let log = std::fs::File::create(spec.log).expect("log file");
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--ignored", "--exact", "child_worker", "--nocapture", "--test-threads", "1"])
        .env("PAYOUTD_TELEMETRY_CHILD", "1")
        .env("DATABASE_URL", database_url)
        .env("PAYOUTD_8B_PARTNER_BASE_URL", sandbox)
        .env("PAYOUTD_8B_PARTNER_SERVICE_ID", SERVICE_ID)
        .env("PAYOUTD_8B_PARTNER_SECRET", PARTNER_SECRET)
        .env("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS", STATUS_INTERVAL_SECS.to_string())
        .env("PAYOUTD_8B_PARTNER_REQUEST_TIMEOUT_MS", "1000")
        .env("PAYOUTD_LEASE_SECS", "1.5")
        .env("PAYOUTD_HEARTBEAT_SECS", "0.5")
        .env("PAYOUTD_SAFETY_MARGIN_SECS", "0.3")
        .env("PAYOUTD_IDLE_POLL_MS", "100")
        .env("PAYOUTD_RETRY_BASE_MS", "100")
        .env("PAYOUTD_PROVIDER_CALLS_PER_SECOND", "1000")
        .env("PAYOUTD_ADMIN_LISTEN", format!("127.0.0.1:{}", spec.admin_port))
        .env("PAYOUTD_GAUGE_INTERVAL_SECS", "0.2")
        .env("PAYOUTD_BALANCE_POLL_SECS", "0.5")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("PAYOUTD_LOG_FORMAT", if spec.json_logs { "json" } else { "text" })
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_SERVICE_NAME", spec.service)
        .env("OTEL_BSP_SCHEDULE_DELAY", spec.batch_delay_ms.to_string())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .stdout(Stdio::null())
        .stderr(log);
    Worker(command.spawn().expect("spawn a worker process"))
}

async fn wait_ready(http: &reqwest::Client, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/health/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "worker on admin port {port} not ready within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(child: &mut Child, timeout: Duration) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "worker did not stop on SIGTERM within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_payout_is_one_trace_across_a_killed_worker() {
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let addr = receiver.local_addr().expect("addr");
    // SAFETY: nothing else runs in this process yet (the runtime is built below; nextest runs
    // one test per process). The OpenTelemetry libraries read these from the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("OTEL_SERVICE_NAME", "payoutd-api");
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "60000");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(scenario(receiver, addr));
}

async fn scenario(receiver: std::net::TcpListener, addr: SocketAddr) {
    let shared: Shared = Arc::default();
    receiver.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(receiver).expect("listener");
    let router = axum::Router::new()
        .route("/v1/traces", post(receive_traces))
        .route("/v1/metrics", post(receive_metrics))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let otlp = format!("http://{addr}");

    let telemetry = payoutd::telemetry::init("warn");
    assert!(telemetry.plan.traces && telemetry.plan.metrics, "{:?}", telemetry.plan);

    // Every submit is executed and then answered too late (the request times out): the payout
    // is in flight long enough to kill its worker mid-call. No callbacks: the second worker has
    // to ask the provider.
    let faults = Faults {
        timeout_after_execute_rate: 1.0,
        timeout_delay: Duration::from_secs(3),
        ..Faults::default()
    };
    let options = AppOptions {
        faults,
        workers: 0,
        callbacks: false,
        status_interval: Duration::from_secs_f64(STATUS_INTERVAL_SECS),
        ..AppOptions::default()
    };
    let app = TestApp::spawn(options).await;
    let db_url = database_url(&app.db.options);
    let sandbox = app.sandbox.base_url();
    let dir = std::env::temp_dir().join(format!("payoutd-telemetry-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let (log_a, log_b): (PathBuf, PathBuf) = (dir.join("worker-a.log"), dir.join("worker-b.log"));
    let http = reqwest::Client::new();

    // Worker A: serves probes and metrics on its admin listener.
    let admin_a = free_port();
    let spec_a = ChildSpec {
        service: "payoutd-worker-a",
        admin_port: admin_a,
        batch_delay_ms: 50,
        json_logs: false,
        log: &log_a,
    };
    let mut worker_a = spawn_worker(&spec_a, &db_url, &sandbox, &otlp);
    wait_ready(&http, admin_a, Duration::from_secs(30)).await;
    assert_eq!(
        http.get(format!("http://127.0.0.1:{admin_a}/health/live")).send().await.expect("live").status(),
        200
    );
    // The gauges' first refresh follows readiness closely.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics_a = loop {
        let text = http
            .get(format!("http://127.0.0.1:{admin_a}/metrics"))
            .send()
            .await
            .expect("worker A /metrics")
            .text()
            .await
            .expect("text");
        if text.contains("payoutd_due_payouts") {
            break text;
        }
        assert!(Instant::now() < deadline, "worker A's gauges never showed:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The caller's trace context.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let caller_span = format!("{:016x}", rand::random::<u64>() | 1);
    let token = app.token(&["*"]).await;
    let response = app
        .http
        .post(format!("{}/v1/payouts", app.api))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&payout_body("traced-1", "150000", "IDR"))
        .send()
        .await
        .expect("enqueue");
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("json");
    let id = uuid::Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid");

    // Kill worker A while its submit call is in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let in_flight: bool = sqlx::query_scalar("SELECT submit_in_flight FROM payouts WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .expect("row");
        if in_flight {
            break;
        }
        assert!(Instant::now() < deadline, "worker A never started the submit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-call (the request times out only after 1 s): wait until the finished spans (the
    // write of check, intent and "submit started" that came right before the call) have left
    // worker A (50 ms batch delay), then kill it.
    let exported = Instant::now() + Duration::from_millis(700);
    while Instant::now() < exported {
        let done = {
            let guard = shared.lock().expect("lock");
            let from_a = |name: &'static str| {
                guard.spans.iter().filter(move |s| s.service == "payoutd-worker-a" && s.name == name)
            };
            from_a("transition write").any(|s| s.attr("transition.to") == Some("intent_recorded"))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sqlx::query_scalar::<_, bool>("SELECT submit_in_flight FROM payouts WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .expect("row"),
        "still mid-call"
    );
    worker_a.0.kill().expect("SIGKILL worker A");
    worker_a.0.wait().expect("reap worker A");

    // Worker B: JSON logs; its spans can only leave through the flush on shutdown.
    let admin_b = free_port();
    let spec_b = ChildSpec {
        service: "payoutd-worker-b",
        admin_port: admin_b,
        batch_delay_ms: 60_000,
        json_logs: true,
        log: &log_b,
    };
    let mut worker_b = spawn_worker(&spec_b, &db_url, &sandbox, &otlp);
    app.wait_for_state(id, PayoutState::Paid, Duration::from_secs(30)).await;
    let metrics_b = http
        .get(format!("http://127.0.0.1:{admin_b}/metrics"))
        .send()
        .await
        .expect("worker B /metrics")
        .text()
        .await
        .expect("text");
    terminate(&mut worker_b.0, Duration::from_secs(15));

    // A late callback (taken into account, changes nothing) and a forged one.
    let row = payoutd_tests::row(&app, id).await;
    let reference = row.provider_reference.clone().expect("reference");
    assert_eq!(send_callback(&app, &reference, "150000", "1", PARTNER_SECRET).await, (200, "OK".to_owned()));
    assert_eq!(send_callback(&app, &reference, "150000", "1", "forged-secret").await.0, 200);
    let seen_by_sandbox = app.sandbox.traceparents();
    app.shutdown().await;
    telemetry.shutdown().await;

    let received = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = shared.lock().expect("lock").spans.iter().any(|s| s.name == "callback receipt");
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let guard = shared.lock().expect("lock");
        (guard.spans.clone(), guard.metric_names.clone())
    };
    let (all_spans, metric_names) = received;
    let mut spans: Vec<&SpanRec> = all_spans.iter().filter(|s| s.trace_id == trace_id).collect();
    spans.sort_by_key(|s| s.start);

    println!("spans of payout {id} (trace {trace_id}), by start time:");
    for s in &spans {
        println!(
            "  {:<17} {:<36} kind={} state={:<16} token={:<3} span={} parent={}{}",
            s.service,
            s.name,
            s.kind,
            s.attr("payout.state").unwrap_or("-"),
            s.attr("payout.fencing_token").unwrap_or("-"),
            s.span_id,
            s.parent,
            s.attr("http.response.status_code").map(|c| format!(" status={c}")).unwrap_or_default(),
        );
    }

    // The API's server span continues the caller's trace.
    let api = spans.iter().find(|s| s.name == "POST /v1/payouts").expect("the enqueue request span");
    assert_eq!(
        (api.kind, api.parent.as_str(), api.service.as_str()),
        (KIND_SERVER, caller_span.as_str(), "payoutd-api")
    );

    // Steps: consumer spans, children of the stored trace context, in both worker processes.
    let steps: Vec<&&SpanRec> = spans.iter().filter(|s| s.name == "process payouts").collect();
    for s in &steps {
        assert_eq!(s.kind, KIND_CONSUMER, "{s:?}");
        assert_eq!(s.parent, caller_span, "a step is a child of the stored traceparent: {s:?}");
        assert_eq!(s.attr("payout.id"), Some(id.to_string().as_str()));
        assert_eq!(s.attr("payout.account"), Some(SERVICE_ID));
        assert_eq!(s.attr("payout.provider"), Some("8b_partner"));
        assert_eq!(s.attr("messaging.operation.type"), Some("process"));
        assert!(s.attr("payout.attempt").is_some() && s.attr("payout.fencing_token").is_some(), "{s:?}");
    }
    let states = |service: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|s| s.service == service)
            .filter_map(|s| s.attr("payout.state").map(str::to_owned))
            .collect()
    };
    // Worker A's first step (check, intent and submit, one write before the call) was the one
    // it was killed in: it finished none.
    assert!(
        states("payoutd-worker-a").is_empty(),
        "worker A's finished steps: {:?}",
        states("payoutd-worker-a")
    );
    let b_states = states("payoutd-worker-b");
    assert_eq!(b_states.first().map(String::as_str), Some("intent_recorded"), "{b_states:?}");
    assert!(b_states.iter().any(|s| s == "in_doubt"), "{b_states:?}");
    let token_of = |service: &str| {
        spans
            .iter()
            .filter(|s| s.service == service && (s.name == "process payouts" || s.name == "transition write"))
            .filter_map(|s| s.attr("payout.fencing_token")?.parse::<i64>().ok())
            .max()
    };
    assert!(token_of("payoutd-worker-a").is_some(), "worker A's write carries its token");
    assert!(
        token_of("payoutd-worker-b") > token_of("payoutd-worker-a"),
        "B took the payout over with a new token"
    );

    // The only spans whose parent was never exported are those of worker A's killed step: its
    // balance call, and the write of check, intent and "submit started" before the submit call.
    let exported: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let orphans: Vec<&&SpanRec> =
        spans.iter().filter(|s| s.parent != caller_span && !exported.contains(s.parent.as_str())).collect();
    assert!(!orphans.is_empty(), "worker A was killed inside a step");
    for o in &orphans {
        assert_eq!(o.service, "payoutd-worker-a", "{o:?}");
        assert_eq!(o.parent, orphans[0].parent, "one unfinished step");
    }
    assert!(
        orphans
            .iter()
            .any(|o| o.name == "transition write" && o.attr("transition.to") == Some("intent_recorded")),
        "{orphans:?}"
    );

    // Provider calls and writes hang under their step (A's under its killed one); the call's
    // traceparent went out.
    let mut step_ids: BTreeSet<&str> = steps.iter().map(|s| s.span_id.as_str()).collect();
    step_ids.insert(orphans[0].parent.as_str());
    let calls: Vec<&&SpanRec> = spans.iter().filter(|s| s.name.starts_with("POST /partner/")).collect();
    assert!(
        calls
            .iter()
            .any(|c| c.name == "POST /partner/{service_id}/balance" && c.service == "payoutd-worker-a")
    );
    assert!(
        calls.iter().any(|c| c.name == "POST /partner/{service_id}/check" && c.service == "payoutd-worker-b")
    );
    for c in &calls {
        assert_eq!(c.kind, KIND_CLIENT);
        assert!(step_ids.contains(c.parent.as_str()), "a provider call is a child of a step: {c:?}");
        assert_eq!(c.attr("http.request.method"), Some("POST"));
        assert!(
            c.attr("url.path").is_some_and(|p| p.starts_with(&format!("/partner/{SERVICE_ID}/"))),
            "{c:?}"
        );
        assert_eq!(c.attr("http.response.status_code"), Some("200"));
        assert_eq!(c.attr("outcome"), Some("ok"));
        let sent = format!("00-{trace_id}-{}-01", c.span_id);
        assert!(seen_by_sandbox.iter().any(|(_, tp)| tp == &sent), "the provider received {sent}");
    }
    let writes: Vec<&&SpanRec> = spans.iter().filter(|s| s.name == "transition write").collect();
    // A's check + intent + "submit started"; B's move to in_doubt and its final answer.
    assert!(writes.len() >= 3, "{}", writes.len());
    for w in &writes {
        assert!(step_ids.contains(w.parent.as_str()), "a write is a child of a step: {w:?}");
        assert!(w.attr("payout.fencing_token").is_some() && w.attr("transition.to").is_some());
    }

    // The late callback joins the payout's trace, linked to its HTTP request.
    let receipt = spans.iter().find(|s| s.name == "callback receipt").expect("callback receipt span");
    assert_eq!((receipt.parent.as_str(), receipt.kind), (caller_span.as_str(), KIND_CONSUMER));
    assert_eq!(receipt.attr("callback.result"), Some("accepted"));
    assert!(!receipt.links.is_empty(), "linked to the callback's HTTP request span");

    // No secret in any attribute or event of any span, nor the signature.
    for s in &all_spans {
        let everything = format!("{} {:?} {}", s.name, s.attributes, s.event_text);
        for secret in [PARTNER_SECRET, token.as_str(), "hash="] {
            assert!(!everything.contains(secret), "{secret:?} in span {s:?}");
        }
    }

    // Logs: each line inside a step carries trace id and payout id; no secret.
    let text_a = std::fs::read_to_string(&log_a).expect("log A");
    let step_lines: Vec<&str> = text_a.lines().filter(|l| l.contains("process payouts{")).collect();
    assert!(!step_lines.is_empty(), "worker A logged inside steps:\n{text_a}");
    for line in &step_lines {
        assert!(line.contains(&format!("trace_id={trace_id}")) && line.contains(&id.to_string()), "{line}");
    }
    let text_b = std::fs::read_to_string(&log_b).expect("log B");
    let mut json_step_lines = 0;
    for line in text_b.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        let Some(step) =
            v["spans"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "process payouts"))
        else {
            continue;
        };
        json_step_lines += 1;
        assert_eq!(step["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(step["payout.id"], id.to_string().as_str(), "{line}");
    }
    assert!(json_step_lines > 0, "worker B logged JSON lines inside steps:\n{text_b}");
    for (what, text) in
        [("log A", &text_a), ("log B", &text_b), ("metrics A", &metrics_a), ("metrics B", &metrics_b)]
    {
        for secret in [PARTNER_SECRET, token.as_str()] {
            assert!(!text.contains(secret), "a secret in {what}");
        }
    }
    // Each worker process served /metrics; metrics went out over OTLP too.
    assert!(metrics_b.contains("payoutd_transitions_total"), "{metrics_b}");
    assert!(metrics_b.contains("payoutd_lease_takeovers_total"), "B took over A's lease:\n{metrics_b}");
    assert!(metric_names.contains("payoutd.provider.call.duration"), "{metric_names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `payoutd worker` process of the test above (its CLI code, configured by the environment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process started by the telemetry test"]
async fn child_worker() {
    if std::env::var("PAYOUTD_TELEMETRY_CHILD").is_err() {
        return;
    }
    let telemetry = payoutd::telemetry::init("info,sqlx=warn");
    let cli = payoutd::cli::Cli::try_parse_args(["payoutd", "worker"]).expect("arguments");
    let config = cli.config_with_env(|name| std::env::var(name).ok()).expect("configuration");
    let result = payoutd::cli::execute(cli, config).await;
    telemetry.shutdown().await;
    result.expect("the worker ran");
}
