//! Logs, traces and metrics of the binary.
//!
//! - Logs: human-readable on stderr by default, JSON lines with `PAYOUTD_LOG_FORMAT=json`;
//!   `RUST_LOG` filters (default "info"; target=level directives). A line inside a step carries
//!   the step span's fields,
//!   `payout.id` and `trace_id` among them.
//! - Traces: every process has an OpenTelemetry tracer (so spans have trace ids for the logs
//!   and for the trace context stored at enqueue), and exports spans over OTLP/HTTP only when
//!   the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`,
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//!   `OTEL_BSP_*` are read by the OpenTelemetry libraries themselves). Unset: nothing is sent
//!   and nothing is said about it. W3C trace context is the propagator, set here in code.
//! - Metrics: one set of OpenTelemetry instruments, read as Prometheus text by the admin
//!   listener's `/metrics` ([`render_metrics`]) and, when an OTLP endpoint is configured (or
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), pushed over OTLP/HTTP every
//!   `OTEL_METRIC_EXPORT_INTERVAL` ms as well.
//!
//! Only `http/protobuf` is built in (no gRPC stack); another `OTEL_EXPORTER_OTLP_PROTOCOL` is
//! refused with a message, and nothing is exported. `OTEL_SDK_DISABLED=true` and
//! `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` turn export off.
//!
//! [`Telemetry::shutdown`] flushes both exporters; the binary calls it on the way out.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::ConfigError;

/// The `[telemetry]` section: where the admin listener binds and how often the gauges move.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of the admin listener (`/metrics`, `/health/live`, `/health/ready`), separate
    /// from the API and callback port. Unset: 127.0.0.1:9464, given up with a warning if that
    /// port is taken (several processes on one host). Set: it must bind, or the process stops.
    /// "off": no admin listener.
    pub admin_listen: Option<String>,
    /// Seconds between refreshes of the queue gauges (payouts by state, due backlog, oldest due).
    pub gauge_interval_secs: f64,
    /// Seconds between provider balance polls; 0: never.
    pub balance_poll_secs: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { admin_listen: None, gauge_interval_secs: 15.0, balance_poll_secs: 60.0 }
    }
}

/// Where the admin listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminBind {
    /// Nothing configured: this address if it is free.
    Default(std::net::SocketAddr),
    /// Configured: this address or a failed start.
    Required(std::net::SocketAddr),
    Off,
}

/// The admin listener's address when none is configured (the OpenTelemetry Prometheus port).
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

impl TelemetrySettings {
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PAYOUTD_ADMIN_LISTEN") {
            self.admin_listen = Some(v);
        }
        if let Some(v) = get("PAYOUTD_GAUGE_INTERVAL_SECS") {
            self.gauge_interval_secs = parse("PAYOUTD_GAUGE_INTERVAL_SECS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_BALANCE_POLL_SECS") {
            self.balance_poll_secs = parse("PAYOUTD_BALANCE_POLL_SECS", &v)?;
        }
        self.admin_bind()?;
        Ok(())
    }

    pub fn admin_bind(&self) -> Result<AdminBind, ConfigError> {
        match self.admin_listen.as_deref().map(str::trim) {
            None => Ok(AdminBind::Default(DEFAULT_ADMIN_LISTEN)),
            Some("off") => Ok(AdminBind::Off),
            Some(addr) => addr.parse().map(AdminBind::Required).map_err(|e| ConfigError::Env {
                name: "PAYOUTD_ADMIN_LISTEN",
                reason: format!("{addr:?}: {e} (an address like 0.0.0.0:9464, or \"off\")"),
            }),
        }
    }

    pub fn gauges(&self, engine: &payoutd_engine::EngineConfig) -> payoutd_engine::gauges::GaugeSettings {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
        payoutd_engine::gauges::GaugeSettings {
            every: secs(self.gauge_interval_secs).max(Duration::from_millis(100)),
            balance_every: (self.balance_poll_secs > 0.0).then(|| secs(self.balance_poll_secs)),
            provider_calls_per_second: engine.provider_calls_per_second,
        }
    }
}

fn parse(name: &'static str, v: &str) -> Result<f64, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(ConfigError::Env { name, reason: format!("{v:?} is not a number of seconds") }),
    }
}

/// The registry `/metrics` is rendered from, once telemetry is installed.
static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// What export the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPlan {
    pub traces: bool,
    pub metrics: bool,
    /// Why export is off although an endpoint is set (an unsupported protocol), to log once.
    pub refused: Option<String>,
}

impl ExportPlan {
    /// Reads the standard OpenTelemetry variables through `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| get(name).is_some_and(|v| !v.trim().is_empty());
        let is = |name: &str, value: &str| get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
        if is("OTEL_SDK_DISABLED", "true") {
            return Self { traces: false, metrics: false, refused: None };
        }
        let mut traces = (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            && !is("OTEL_TRACES_EXPORTER", "none");
        let mut metrics = (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
            && !is("OTEL_METRICS_EXPORTER", "none");
        let mut refused = None;
        for (signal, var, on) in [
            ("traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &mut traces),
            ("metrics", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", &mut metrics),
        ] {
            let protocol = get(var).or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
            if let Some(protocol) = protocol.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
                && protocol != "http/protobuf"
                && *on
            {
                *on = false;
                refused = Some(format!(
                    "OTLP {signal} export is off: protocol {protocol:?} is not built into payoutd; \
                     use http/protobuf (the collector's port 4318)"
                ));
            }
        }
        Self { traces, metrics, refused }
    }
}

/// The installed providers; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    pub plan: ExportPlan,
}

impl Telemetry {
    /// Flushes and stops the exporters (bounded: at most 5 s). Spans of steps still running
    /// are not exported; everything that ended is.
    pub async fn shutdown(self) {
        let Self { tracer, meter, .. } = self;
        // The exporters' HTTP client runs on this runtime: flush from a blocking thread so the
        // runtime stays free to carry the requests.
        let flush = tokio::task::spawn_blocking(move || {
            let _ = tracer.shutdown();
            let _ = meter.shutdown();
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
    }
}

/// Installs logging, the tracer and the meter, reading the process environment. Call once,
/// inside the Tokio runtime, before anything records (instruments are created on first use
/// from the provider installed here).
pub fn init(default_filter: &str) -> Telemetry {
    init_with_env(default_filter, |name| std::env::var(name).ok())
}

/// [`init`] with the environment given by `get` for payoutd's own decisions (what to export,
/// the log format). The OpenTelemetry libraries read their own variables from the process
/// environment.
pub fn init_with_env(default_filter: &str, get: impl Fn(&str) -> Option<String>) -> Telemetry {
    let plan = ExportPlan::from_env(&get);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource(&get);
    let runtime = tokio::runtime::Handle::try_current().ok();
    let timeout = get("OTEL_EXPORTER_OTLP_TIMEOUT")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let mut problems = Vec::new();

    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
    if plan.traces {
        match (&runtime, http_client(runtime.as_ref(), timeout)) {
            (Some(_), Some(client)) => {
                match opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_timeout(timeout)
                    .build()
                {
                    Ok(exporter) => {
                        tracer = tracer.with_span_processor(BatchSpanProcessor::builder(exporter).build())
                    }
                    Err(e) => problems.push(format!("OTLP trace exporter: {e}")),
                }
            }
            _ => problems.push("OTLP trace export needs a Tokio runtime".to_owned()),
        }
    }
    let tracer = tracer.build();

    let registry = REGISTRY.get_or_init(prometheus::Registry::new).clone();
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    match opentelemetry_prometheus::exporter().with_registry(registry).scope_info_enabled(false).build() {
        Ok(exporter) => meter = meter.with_reader(exporter),
        Err(e) => problems.push(format!("Prometheus exporter: {e}")),
    }
    if plan.metrics {
        match http_client(runtime.as_ref(), timeout) {
            Some(client) => match opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_timeout(timeout)
                .build()
            {
                Ok(exporter) => meter = meter.with_reader(PeriodicReader::builder(exporter).build()),
                Err(e) => problems.push(format!("OTLP metric exporter: {e}")),
            },
            None => problems.push("OTLP metric export needs a Tokio runtime".to_owned()),
        }
    }
    let meter = meter.build();
    opentelemetry::global::set_meter_provider(meter.clone());
    opentelemetry::global::set_tracer_provider(tracer.clone());

    install_subscriber(default_filter, &get, &tracer);
    if let Some(refused) = &plan.refused {
        tracing::error!("{refused}");
    }
    for problem in problems {
        tracing::error!("telemetry: {problem}; continuing without it");
    }
    if plan.traces || plan.metrics {
        tracing::info!(traces = plan.traces, metrics = plan.metrics, "OTLP export on");
    }
    Telemetry { tracer, meter, plan }
}

/// The `/metrics` body: every instrument in the Prometheus text format. Empty before
/// [`init`] (a process without telemetry has nothing to say).
pub fn render_metrics() -> Result<String, String> {
    match REGISTRY.get() {
        Some(registry) => {
            prometheus::TextEncoder::new().encode_to_string(&registry.gather()).map_err(|e| e.to_string())
        }
        None => Ok(String::new()),
    }
}

/// The service's resource: `OTEL_SERVICE_NAME`, else a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, else "payoutd"; the version; the other resource attributes.
fn resource(get: &impl Fn(&str) -> Option<String>) -> Resource {
    let named = get("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name("payoutd");
    }
    builder.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
}

/// The stderr log layer and the OpenTelemetry layer, without per-layer filters (sqlx asks
/// `enabled!` without emitting, which leaves per-layer filter state behind and silently drops
/// the next span's events). Instead, one global filter lets through what `RUST_LOG` asks for
/// plus payoutd's own spans and events at info (traces do not depend on log levels), and the
/// log layer writes only the events `RUST_LOG` asks for. Log lines keep the full span context,
/// so a warning inside a step still shows the step's payout id and trace id.
fn install_subscriber(
    default_filter: &str,
    get: &impl Fn(&str) -> Option<String>,
    tracer: &SdkTracerProvider,
) {
    let logs = get("RUST_LOG")
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| f.parse::<Targets>().ok())
        .or_else(|| default_filter.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let mut everything = logs.clone();
    if !logs.would_enable("payoutd", &tracing::Level::INFO) {
        everything = everything.with_target("payoutd", tracing::Level::INFO);
    }
    let json = get("PAYOUTD_LOG_FORMAT").is_some_and(|f| f == "json");
    // Colours only for a terminal: files, journald and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt: Box<dyn Layer<_> + Send + Sync> = if json {
        Box::new(EventGate { inner: fmt.json().with_current_span(false).with_span_list(true), logs })
    } else {
        Box::new(EventGate { inner: fmt, logs })
    };
    let otel = tracing_opentelemetry::layer().with_tracer(tracer.tracer("payoutd"));
    let _ = tracing_subscriber::registry().with(everything).with(fmt).with(otel).try_init();
}

/// Passes a layer every span notification but only the events `logs` enables.
struct EventGate<L> {
    inner: L,
    logs: Targets,
}

impl<S, L> Layer<S> for EventGate<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_new_span(attrs, id, ctx)
    }

    fn on_record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx)
    }

    fn on_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if self.logs.would_enable(meta.target(), meta.level()) {
            self.inner.on_event(event, ctx)
        }
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx)
    }

    fn on_id_change(&self, old: &tracing::span::Id, new: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx)
    }
}

/// The OTLP exporters' HTTP client: the project's own reqwest (rustls) driven by the Tokio
/// runtime, so no second HTTP stack is built in.
fn http_client(runtime: Option<&tokio::runtime::Handle>, timeout: Duration) -> Option<OtlpHttpClient> {
    let runtime = runtime?.clone();
    let client = reqwest::Client::builder().timeout(timeout).build().ok()?;
    Some(OtlpHttpClient { client, runtime })
}

/// Answers from a collector are small; anything larger is not read.
const MAX_COLLECTOR_ANSWER: usize = 1024 * 1024;

#[derive(Debug, Clone)]
struct OtlpHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        // The exporters call from their own threads; the request runs on the runtime.
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut response = client.execute(request).await?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_COLLECTOR_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer =
                http::Response::builder().status(response.status()).body(bytes::Bytes::from(body))?;
            *answer.headers_mut() = response.headers().clone();
            Ok::<_, opentelemetry_http::HttpError>(answer)
        });
        task.await.map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan(pairs: &[(&str, &str)]) -> ExportPlan {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ExportPlan::from_env(move |k| map.get(k).cloned())
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_on_with_one() {
        assert_eq!(plan(&[]), ExportPlan { traces: false, metrics: false, refused: None });
        assert!(!plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).traces);
        let on = plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert!(on.traces && on.metrics && on.refused.is_none());
        let traces_only = plan(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]);
        assert!(traces_only.traces && !traces_only.metrics);
        let no_metrics =
            plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRICS_EXPORTER", "none")]);
        assert!(no_metrics.traces && !no_metrics.metrics);
        let disabled =
            plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]);
        assert!(!disabled.traces && !disabled.metrics);
    }

    #[test]
    fn the_admin_listener_is_best_effort_by_default_required_when_set_and_can_be_off() {
        let bind = |v: Option<&str>| {
            let mut t = TelemetrySettings::default();
            t.apply_env(&|k: &str| (k == "PAYOUTD_ADMIN_LISTEN").then(|| v.map(str::to_owned)).flatten())
                .map(|()| t.admin_bind())
        };
        assert_eq!(bind(None).unwrap().unwrap(), AdminBind::Default(DEFAULT_ADMIN_LISTEN));
        assert_eq!(
            bind(Some("0.0.0.0:9464")).unwrap().unwrap(),
            AdminBind::Required("0.0.0.0:9464".parse().unwrap())
        );
        assert_eq!(bind(Some("off")).unwrap().unwrap(), AdminBind::Off);
        let err = bind(Some("9464")).unwrap_err().to_string();
        assert!(err.contains("PAYOUTD_ADMIN_LISTEN"), "{err}");
        let toml: crate::config::Config =
            toml::from_str("[telemetry]\nadmin_listen = \"off\"\nbalance_poll_secs = 0\n").unwrap();
        assert_eq!(toml.telemetry.admin_bind().unwrap(), AdminBind::Off);
        let engine = payoutd_engine::EngineConfig::default();
        assert_eq!(toml.telemetry.gauges(&engine).balance_every, None);
    }

    #[test]
    fn only_http_protobuf_is_exported_and_another_protocol_says_why() {
        let ok = plan(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert!(ok.traces && ok.refused.is_none());
        let grpc = plan(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(!grpc.traces && !grpc.metrics);
        assert!(grpc.refused.as_deref().is_some_and(|r| r.contains("http/protobuf")), "{grpc:?}");
        // An unsupported protocol for metrics only leaves traces on.
        let mixed = plan(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ]);
        assert!(mixed.traces && !mixed.metrics && mixed.refused.is_some());
    }
}
