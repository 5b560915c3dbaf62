//! Issue 5: money safety under stalls, crashes and hostile input. Each test is named after the
//! item (and DESIGN rule) it guards, and each fails on the engine as it was before the fix.
//!
//! The provider is always the project's own sandbox over real HTTP; where a test needs the
//! provider to stall or to answer in a scripted way, [`Tap`] wraps the real connector and
//! delays or replaces single answers. The database is never faked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use payoutd_core::PayoutState;
use payoutd_engine::rate_limit::RateLimiter;
use payoutd_engine::references::References;
use payoutd_engine::steps::{self, StepContext};
use payoutd_engine::transition_writer::TransitionWriter;
use payoutd_engine::{Clock, EngineConfig, Worker};
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_providers::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, Connectors, FrozenRequest, IncomingCallback,
    PayoutForProvider, ProviderError, ProviderStatus, SubmitOutcome,
};
use payoutd_sandbox::{Faults, Sandbox};
use payoutd_store::queue::{self, Lease};
use payoutd_store::transitions::{self, ResubmitGate, StatusStart};
use payoutd_store::{PgPool, StoreError};
use payoutd_tests::{AppOptions, TestApp, assert_no_double_execution, fast_engine, record_intent_only, row};
use tokio_util::sync::CancellationToken;

// ---- a tap on the real connector -----------------------------------------------------------

/// Wraps the real 8B partner connector. Everything goes to the sandbox unless a test asked
/// for a stall or a scripted answer.
#[derive(Default)]
struct TapScript {
    /// Each submit waits this long before it is sent (a stalled worker).
    stall_submit: Option<Duration>,
    /// While a submit stalls, hold this many connections of this pool (a starved pool).
    hold_during_stall: Option<(PgPool, u32)>,
    /// Set on the sandbox once the first submit has returned.
    faults_after_first_submit: Option<Faults>,
    /// Answers given instead of asking the sandbox, first to last.
    status_answers: VecDeque<ProviderStatus>,
    check_answers: VecDeque<Result<CheckOutcome, ProviderError>>,
}

struct Tap {
    inner: Arc<dyn Connector>,
    sandbox: Arc<Sandbox>,
    script: Mutex<TapScript>,
    submits: AtomicU32,
    statuses: AtomicU32,
    /// Set when a stalled submit was dropped (cancelled) before it was sent.
    submit_cancelled: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Tap {
    fn options(
        script: impl Fn() -> TapScript + Send + Sync + 'static,
    ) -> (AppOptions, Arc<Mutex<Option<Arc<Tap>>>>) {
        let slot: Arc<Mutex<Option<Arc<Tap>>>> = Arc::default();
        let s = slot.clone();
        let options = AppOptions {
            wrap: Some(Arc::new(move |inner, sandbox, _pool| {
                let tap = Arc::new(Tap {
                    inner,
                    sandbox,
                    script: Mutex::new(script()),
                    submits: AtomicU32::new(0),
                    statuses: AtomicU32::new(0),
                    submit_cancelled: Arc::default(),
                });
                *s.lock().unwrap() = Some(tap.clone());
                tap as Arc<dyn Connector>
            })),
            ..AppOptions::default()
        };
        (options, slot)
    }
}

impl Connector for Tap {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn account(&self) -> String {
        self.inner.account()
    }
    fn check<'a>(&'a self, p: &'a PayoutForProvider) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>> {
        Box::pin(async move {
            let scripted = self.script.lock().unwrap().check_answers.pop_front();
            match scripted {
                Some(answer) => answer,
                None => self.inner.check(p).await,
            }
        })
    }
    fn freeze_submit(
        &self,
        p: &PayoutForProvider,
        reference: &str,
        now: chrono::DateTime<Utc>,
    ) -> FrozenRequest {
        self.inner.freeze_submit(p, reference, now)
    }
    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome> {
        Box::pin(async move {
            let n = self.submits.fetch_add(1, Ordering::SeqCst) + 1;
            let (stall, hold) = {
                let s = self.script.lock().unwrap();
                (s.stall_submit, s.hold_during_stall.clone())
            };
            if let Some(stall) = stall {
                let guard = SetOnDrop(self.submit_cancelled.clone());
                let mut held = Vec::new();
                if let Some((pool, n)) = hold {
                    // Every connection that is free now, up to n (the worker's LISTEN may hold one).
                    while held.len() < n as usize {
                        match tokio::time::timeout(Duration::from_millis(300), pool.acquire()).await {
                            Ok(Ok(conn)) => held.push(conn),
                            _ => break,
                        }
                    }
                    assert!(!held.is_empty(), "held no connection");
                }
                tokio::time::sleep(stall).await;
                drop(held);
                std::mem::forget(guard); // not cancelled: the stall ran to its end
            }
            let outcome = self.inner.submit(request).await;
            if n == 1 {
                let after = self.script.lock().unwrap().faults_after_first_submit.clone();
                if let Some(f) = after {
                    self.sandbox.set_faults(f);
                }
            }
            outcome
        })
    }
    fn status<'a>(
        &'a self,
        r: &'a FrozenRequest,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(async move {
            self.statuses.fetch_add(1, Ordering::SeqCst);
            let scripted = self.script.lock().unwrap().status_answers.pop_front();
            match scripted {
                Some(answer) => Ok(answer),
                None => self.inner.status(r, id).await,
            }
        })
    }
    fn min_status_interval(&self) -> Duration {
        self.inner.min_status_interval()
    }
    fn request_timeout(&self) -> Duration {
        self.inner.request_timeout()
    }
    fn verify_callback(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict {
        self.inner.verify_callback(callback)
    }
    fn callback_answer(&self, accepted: bool) -> &'static str {
        self.inner.callback_answer(accepted)
    }
}

fn tap(slot: &Arc<Mutex<Option<Arc<Tap>>>>) -> Arc<Tap> {
    slot.lock().unwrap().clone().expect("the app built its connector")
}

fn ctx<'a>(
    pool: &'a PgPool,
    engine: &'a EngineConfig,
    connector: &'a dyn Connector,
    actor: &'a str,
) -> StepContext<'a> {
    // A limiter of its own for each context, as each worker has.
    let limiter: &'a RateLimiter = Box::leak(Box::new(RateLimiter::new()));
    let references: &'a References = Box::leak(Box::new(References::new()));
    let writer: &'a TransitionWriter = Box::leak(Box::new(TransitionWriter::start(pool.clone()).0));
    StepContext { pool, config: engine, connector, actor, limiter, references, writer }
}

/// Drives a payout with the engine's own steps until it reaches `until` (under one lease).
async fn drive_to(app: &TestApp, ctx: &StepContext<'_>, id: uuid::Uuid, lease: &Lease, until: PayoutState) {
    let mut r = row(app, id).await;
    while r.state != until {
        let t = steps::run(ctx, &r, lease).await.unwrap();
        transitions::apply(&app.db.pool, lease, &t).await.unwrap();
        r = row(app, id).await;
    }
}

fn no_workers_no_callbacks() -> AppOptions {
    AppOptions { workers: 0, callbacks: false, ..AppOptions::default() }
}

// ---- item 1 / rule 7: a lost status check still counts --------------------------------------

#[tokio::test]
async fn item1_a_status_query_made_by_a_worker_that_died_still_counts_against_the_interval() {
    let app = TestApp::spawn(no_workers_no_callbacks()).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let pool = &app.db.pool;
    let connector = app.connectors.get("8b_partner").unwrap().clone();
    let engine = fast_engine("first");
    let (_, lease) = queue::claim_due(pool, "first", 1, engine.lease).await.unwrap().remove(0);
    let first = ctx(pool, &engine, connector.as_ref(), "worker:first");
    drive_to(&app, &first, id, &lease, PayoutState::Submitted).await;
    // Keep the lease (as the worker's next step would), wait for the status interval, then
    // make one status query and die before writing its result.
    let (_, lease) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = queue::claim_due(pool, "first", 1, engine.lease).await.unwrap();
        if let Some(c) = got.pop() {
            break c;
        }
    };
    let r = row(&app, id).await;
    let t = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match transitions::mark_status_started(
                pool,
                &lease,
                connector.min_status_interval(),
                engine.lease,
                connector.request_timeout(),
            )
            .await
            .unwrap()
            {
                StatusStart::Started => break,
                StatusStart::NotBefore(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    t.await.expect("the status query became due");
    let frozen: FrozenRequest = serde_json::from_value(r.submit_request.clone().unwrap()).unwrap();
    connector.status(&frozen, None).await.unwrap();
    let asked_at = Instant::now();
    let checks_before = app.sandbox.stats().checks;
    // ... killed here. The next worker claims the payout when the lease expires (2 s) and must
    // not ask again before a whole interval (3 s) from the lost query.
    let mut app = app;
    app.start_worker("second");
    let interval = connector.min_status_interval();
    tokio::time::sleep(interval - Duration::from_millis(300)).await;
    assert_eq!(
        app.sandbox.stats().checks,
        checks_before,
        "a status query came {:?} after the lost one; the interval is {interval:?}",
        asked_at.elapsed()
    );
    app.wait_all_final(Duration::from_secs(20)).await;
    assert_eq!(app.state(id).await, PayoutState::Paid);
    assert_eq!(app.sandbox.stats().early_checks, 0);
    app.shutdown().await;
}

// ---- item 2a: a lost lease stops the step; the lease is re-verified before money moves --------

#[tokio::test]
async fn item2a_an_expired_lease_is_refused_right_before_the_money_call() {
    let app = TestApp::spawn(no_workers_no_callbacks()).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let pool = &app.db.pool;
    let connector = app.connectors.get("8b_partner").unwrap().clone();
    let engine = fast_engine("slow");
    let (_, lease) = queue::claim_due(pool, "slow", 1, engine.lease).await.unwrap().remove(0);
    let c = ctx(pool, &engine, connector.as_ref(), "worker:slow");
    record_intent_only(&app.db.pool, &lease, connector.as_ref(), id).await;
    // The worker stalls until its lease has expired. Nobody has claimed the payout yet, so the
    // fencing token still matches; the submit must be refused all the same.
    sqlx::query("UPDATE payouts SET lease_expires_at = now() - interval '1 millisecond' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    let gate = ResubmitGate {
        not_found_answers: 2,
        since_last_submit: engine.stall_window(connector.request_timeout()),
    };
    let refused = transitions::mark_submit_started(
        pool,
        &lease,
        "worker:slow",
        engine.lease,
        gate,
        connector.request_timeout(),
    )
    .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost(_))), "{refused:?}");
    let r = row(&app, id).await;
    assert_eq!((r.submit_attempts, r.submit_in_flight), (0, false));
    // The step as a whole refuses too, and nothing reaches the provider.
    let t = steps::run(&c, &r, &lease).await;
    assert!(matches!(t, Err(payoutd_engine::EngineError::Store(StoreError::LeaseLost(_)))), "{t:?}");
    assert_eq!(app.sandbox.stats().payouts_received, 0);

    // The engine's own first write (check, intent and "submit started" in one commit) checks
    // the lease the same way: a stalled worker records nothing and sends nothing.
    let second = app.enqueue_many(1, "USD", "6.00").await[0];
    // (The first payout's expired lease makes it claimable again: take both, work the second.)
    let (r, lease) = queue::claim_due(pool, "slow", 2, engine.lease)
        .await
        .unwrap()
        .into_iter()
        .find(|(r, _)| r.id == second)
        .expect("the second payout is claimed");
    assert_eq!(r.state, PayoutState::Pending);
    sqlx::query("UPDATE payouts SET lease_expires_at = now() - interval '1 millisecond' WHERE id = $1")
        .bind(second)
        .execute(pool)
        .await
        .unwrap();
    let t = steps::run(&c, &r, &lease).await;
    assert!(matches!(t, Err(payoutd_engine::EngineError::Store(StoreError::LeaseLost(_)))), "{t:?}");
    let r = row(&app, second).await;
    assert_eq!((r.state, r.submit_attempts, r.submit_in_flight), (PayoutState::Pending, 0, false));
    assert!(r.provider_reference.is_none(), "no intent written under an expired lease");
    assert_eq!(app.sandbox.stats().payouts_received, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn item2a_a_lost_lease_cancels_the_step_in_flight() {
    let (mut options, slot) =
        Tap::options(|| TapScript { stall_submit: Some(Duration::from_secs(30)), ..TapScript::default() });
    options.callbacks = false;
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let tap = tap(&slot);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tap.submits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no submit started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another party takes the payout over (as a callback or a rescuing worker would: the
    // fencing token moves on). The stalled step must be cancelled, not left to send later.
    sqlx::query("UPDATE payouts SET fencing_token = fencing_token + 1 WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tap.submit_cancelled.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the step kept running under a lost lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.sandbox.stats().payouts_received, 0, "nothing was sent under the lost lease");
    app.shutdown().await;
}

// ---- item 2b: the configuration check -------------------------------------------------------

#[tokio::test]
async fn item2b_an_interval_not_longer_than_timeout_plus_lease_plus_margin_is_refused() {
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    // The settings the engine shipped with before: 60 s interval, 30 s timeout, 30 s lease.
    let mut partner = payoutd_tests::connector_config(
        &app.sandbox.base_url(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let connectors = Connectors::new().with(Arc::new(EightBPartner::new(partner.clone()).unwrap()));
    let old = EngineConfig {
        lease: Duration::from_secs(30),
        heartbeat_every: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let err = Worker::new(app.db.pool.clone(), connectors, old).err().expect("refused");
    let message = err.to_string();
    println!("{message}");
    for part in [
        "status interval (60 s)",
        "request timeout (30 s)",
        "lease (30 s)",
        "safety margin (5 s)",
        "8b_partner",
    ] {
        assert!(message.contains(part), "{message:?} should name {part}");
    }
    // The new defaults pass.
    partner.request_timeout = payoutd_providers::eightb_partner::EightBPartnerConfig::new(
        "http://x",
        "s",
        payoutd_core::Secret::new("k"),
    )
    .request_timeout;
    let connectors = Connectors::new().with(Arc::new(EightBPartner::new(partner).unwrap()));
    assert!(Worker::new(app.db.pool.clone(), connectors, EngineConfig::default()).is_ok());
    app.shutdown().await;
}

// ---- item 2c: resubmit only after NOT_FOUND twice, long after the last submit ---------------

#[tokio::test]
async fn item2c_a_stalled_first_submit_with_delayed_ingestion_is_not_paid_twice() {
    // The provider takes 2.5 s to show an executed payout to `check` (less than the 3 s status
    // interval, as a provider must for any polling client to work).
    let faults = Faults { ingestion_delay: Duration::from_millis(2500), ..Faults::default() };
    let app = TestApp::spawn(AppOptions { faults, ..no_workers_no_callbacks() }).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let pool = app.db.pool.clone();
    let connector = app.connectors.get("8b_partner").unwrap().clone();
    let engine = fast_engine("stalled");
    let (_, lease) = queue::claim_due(&pool, "stalled", 1, engine.lease).await.unwrap().remove(0);
    record_intent_only(&app.db.pool, &lease, connector.as_ref(), id).await;
    // Worker A commits "submit started" and then stalls: its request leaves 2.2 s later, after
    // its lease has expired.
    let gate = ResubmitGate {
        not_found_answers: 2,
        since_last_submit: engine.stall_window(connector.request_timeout()),
    };
    transitions::mark_submit_started(
        &pool,
        &lease,
        "worker:stalled",
        engine.lease,
        gate,
        connector.request_timeout(),
    )
    .await
    .unwrap();
    let frozen: FrozenRequest = serde_json::from_value(row(&app, id).await.submit_request.unwrap()).unwrap();
    let stalled = {
        let connector = connector.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2200)).await;
            connector.submit(&frozen).await
        })
    };
    // Worker B takes over at lease expiry, finds the payout in doubt and asks the provider.
    let mut app = app;
    app.start_worker("rescuer");
    assert_eq!(
        stalled.await.unwrap(),
        SubmitOutcome::Accepted { provider_id: None },
        "the stalled request arrived"
    );
    app.wait_all_final(Duration::from_secs(30)).await;
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::Paid);
    assert_eq!(r.submit_attempts, 1, "the rescuer never resubmitted");
    let stats = app.sandbox.stats();
    assert!(stats.checks_before_ingestion >= 1, "the first status query met delayed ingestion: {stats:?}");
    assert_no_double_execution(&app.sandbox);
    let reasons = app.reasons(id).await;
    assert!(reasons.iter().any(|r| r.contains("NOT_FOUND (1 of 2")), "{reasons:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn item2c_a_payout_the_provider_never_got_is_resubmitted_after_two_not_found_answers() {
    // The first submit meets a 5xx (nothing executed): two NOT_FOUND answers one interval
    // apart, then one resubmit under the same reference.
    let (mut options, slot) = Tap::options(|| TapScript {
        faults_after_first_submit: Some(Faults::default()),
        ..TapScript::default()
    });
    options.faults = Faults { error_5xx_rate: 1.0, ..Faults::default() };
    options.callbacks = false;
    options.workers = 0;
    let mut app = TestApp::spawn(options).await;
    // The 5xx fault must not hit the balance check: let the first check through by script.
    tap(&slot).script.lock().unwrap().check_answers.push_back(Ok(CheckOutcome::Go));
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    app.start_worker("w");
    app.wait_all_final(Duration::from_secs(40)).await;
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::Paid);
    assert_eq!(r.submit_attempts, 2);
    let events = payoutd_store::payouts::timeline(&app.db.pool, id).await.unwrap();
    let nf: Vec<_> = events.iter().filter(|e| e.reason.contains("NOT_FOUND (1 of 2")).collect();
    assert_eq!(nf.len(), 1, "one NOT_FOUND alone did not resubmit");
    let resubmit = events.iter().find(|e| e.reason == "submit attempt 2 started").unwrap();
    let first = events.iter().find(|e| e.reason == "submit attempt 1 started").unwrap();
    let gap = (resubmit.created_at - first.created_at).to_std().unwrap();
    assert!(
        gap >= Duration::from_secs(6),
        "resubmitted {gap:?} after the first submit (two intervals needed)"
    );
    assert_no_double_execution(&app.sandbox);
    app.shutdown().await;
}

// ---- item 2d: due times on the database clock ------------------------------------------------

#[tokio::test]
async fn item2d_a_worker_whose_clock_runs_40s_ahead_does_not_poll_early() {
    let mut options = no_workers_no_callbacks();
    options.processing_delay = Duration::from_secs(5);
    let mut app = TestApp::spawn(options).await;
    app.options.engine.clock = Clock::skewed(chrono::Duration::seconds(40));
    let ids = app.enqueue_many(3, "USD", "5.00").await;
    app.start_worker("ahead");
    app.wait_all_final(Duration::from_secs(30)).await;
    let stats = app.sandbox.stats();
    assert_eq!(stats.early_checks, 0, "a status query came sooner than the interval after submit: {stats:?}");
    for id in ids {
        let r = row(&app, id).await;
        assert_eq!(r.state, PayoutState::Paid);
        // 5 s of processing with a 3 s interval: two or three queries, never a burst.
        assert!((1..=3).contains(&r.status_queries), "{} status queries", r.status_queries);
    }
    app.shutdown().await;
}

// ---- item 3 / rule 4: a resubmit answered ERROR parks, never fails ---------------------------

#[tokio::test]
async fn item3_a_resubmit_answered_error_parks_the_payout_in_review_never_failed() {
    let (mut options, slot) = Tap::options(|| TapScript {
        // After the first (5xx) submit, the provider refuses the resubmit with ERROR.
        faults_after_first_submit: Some(Faults { reject_rate: 1.0, ..Faults::default() }),
        ..TapScript::default()
    });
    options.faults = Faults { error_5xx_rate: 1.0, ..Faults::default() };
    options.callbacks = false;
    options.workers = 0;
    let mut app = TestApp::spawn(options).await;
    tap(&slot).script.lock().unwrap().check_answers.push_back(Ok(CheckOutcome::Go));
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    app.start_worker("w");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = app.state(id).await;
        if !s.is_active() {
            break;
        }
        assert!(Instant::now() < deadline, "still {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::NeedsReview, "an in-doubt payout is never failed automatically");
    assert_eq!(r.submit_attempts, 2);
    assert!(r.last_error.unwrap().contains("resubmit attempt 2"));
    app.shutdown().await;
}

// ---- item 5: NOT_FOUND parking counts answers ------------------------------------------------

#[tokio::test]
async fn item5_an_accepted_payout_is_parked_on_not_found_answers_not_on_attempts() {
    let (mut options, slot) = Tap::options(|| TapScript {
        status_answers: [ProviderStatus::Processing, ProviderStatus::Processing, ProviderStatus::NotFound]
            .into(),
        ..TapScript::default()
    });
    options.callbacks = false;
    options.processing_delay = Duration::from_millis(100);
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    app.wait_all_final(Duration::from_secs(30)).await;
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::Paid, "one NOT_FOUND after two PROCESSING answers does not park");
    assert_eq!(tap(&slot).statuses.load(Ordering::SeqCst), 4);
    let reasons = app.reasons(id).await;
    assert!(reasons.iter().any(|r| r.contains("NOT_FOUND for an accepted payout (1 of 3")), "{reasons:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn item5_an_accepted_payout_the_provider_keeps_not_finding_is_parked_with_the_count() {
    let (mut options, _slot) = Tap::options(|| TapScript {
        status_answers: [ProviderStatus::NotFound, ProviderStatus::NotFound, ProviderStatus::NotFound].into(),
        ..TapScript::default()
    });
    options.callbacks = false;
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.state(id).await.is_active() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::NeedsReview);
    assert!(r.last_error.unwrap().contains("NOT_FOUND 3 times"));
    assert_eq!(r.submit_attempts, 1, "an accepted payout is never resubmitted");
    app.shutdown().await;
}

// ---- item 6: heartbeats ----------------------------------------------------------------------

#[tokio::test]
async fn item6_heartbeats_keep_the_lease_while_steps_hold_every_pooled_connection() {
    let app = TestApp::spawn(no_workers_no_callbacks()).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    // The worker's pool is small; its slow submit holds every free connection for 5 s (2.5
    // leases). Heartbeats must still get through.
    let small = payoutd_store::connect(app.db.options.clone(), 3).await.unwrap();
    let inner: Arc<dyn Connector> = app.connectors.get("8b_partner").unwrap().clone();
    let tap = Arc::new(Tap {
        inner,
        sandbox: app.sandbox.sandbox().clone(),
        script: Mutex::new(TapScript {
            stall_submit: Some(Duration::from_secs(5)),
            hold_during_stall: Some((small.clone(), 3)),
            ..TapScript::default()
        }),
        submits: AtomicU32::new(0),
        statuses: AtomicU32::new(0),
        submit_cancelled: Arc::default(),
    });
    let connectors = Connectors::new().with(tap.clone() as Arc<dyn Connector>);
    let worker = Worker::new(small, connectors, fast_engine("starved")).unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tap.submits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no submit started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let alive: bool = sqlx::query_scalar("SELECT lease_expires_at > now() FROM payouts WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert!(alive, "the lease expired while the pool was busy: heartbeats starved");
    }
    assert!(!tap.submit_cancelled.load(Ordering::SeqCst), "a healthy step was cancelled");
    // The submit went through: submitted, or already paid by the status query that follows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = app.state(id).await;
        if matches!(state, PayoutState::Submitted | PayoutState::Paid) {
            break;
        }
        assert!(Instant::now() < deadline, "payout {id} is {state}, wanted submitted or paid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let report = handle.await.unwrap();
    assert_eq!(report.leases_lost, 0, "{report:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn item6_heartbeats_stop_when_their_job_ends_however_it_ends() {
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    let pool = app.db.pool.clone();
    let (_, lease) = queue::claim_due(&pool, "panicky", 1, Duration::from_secs(2)).await.unwrap().remove(0);
    let expiry = || async {
        sqlx::query_scalar::<_, chrono::DateTime<Utc>>("SELECT lease_expires_at FROM payouts WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    // A job that panics while its heartbeat runs.
    let (p, l) = (pool.clone(), lease.clone());
    let job = tokio::spawn(async move {
        let _beat =
            payoutd_engine::heartbeat::start(p, l, Duration::from_millis(200), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(700)).await;
        panic!("the step panicked");
    });
    assert!(job.await.is_err());
    // As below: a heartbeat already sent may still land, nothing after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_panic = expiry().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(expiry().await, after_panic, "heartbeats went on after their job panicked");
    // A job whose task is aborted.
    let (p, l) = (pool.clone(), lease.clone());
    let job = tokio::spawn(async move {
        let _beat =
            payoutd_engine::heartbeat::start(p, l, Duration::from_millis(200), Duration::from_secs(2));
        std::future::pending::<()>().await;
    });
    // Aborted once its heartbeat has extended the lease (however long a loaded machine takes).
    let deadline = Instant::now() + Duration::from_secs(10);
    while expiry().await == after_panic {
        assert!(Instant::now() < deadline, "the second job's heartbeats never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    job.abort();
    let _ = job.await;
    // A heartbeat already sent when the task was aborted still lands: the database cannot be
    // called back. Nothing after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_abort = expiry().await;
    assert!(after_abort > after_panic, "the second job's heartbeats ran");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(expiry().await, after_abort, "heartbeats went on after their job was aborted");
    app.shutdown().await;
}

// ---- item 7: poison rows ---------------------------------------------------------------------

#[tokio::test]
async fn item7_poison_rows_are_parked_after_a_bounded_number_of_failed_steps() {
    let mut options = AppOptions { workers: 0, ..AppOptions::default() };
    options.engine.max_failed_steps = 3;
    let mut app = TestApp::spawn(options).await;
    let ids = app.enqueue_many(3, "USD", "5.00").await;
    // One names a provider this worker does not have, one does not decode (a currency no
    // release knows), one is fine.
    sqlx::query("UPDATE payouts SET provider = 'gone_provider' WHERE id = $1")
        .bind(ids[0])
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE payouts SET currency = 'XQQ' WHERE id = $1")
        .bind(ids[1])
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.start_worker("w");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE next_run_at IS NOT NULL")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let rows: Vec<(String, i32, Option<String>, i32)> = sqlx::query_as(
                "SELECT state::text, failed_steps, last_error, total_attempts FROM payouts WHERE next_run_at IS NOT NULL",
            )
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
            panic!("{open} payouts are still retried: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, why) in [(ids[0], "gone_provider"), (ids[1], "XQQ")] {
        let (state, failed, error): (String, i32, String) =
            sqlx::query_as("SELECT state::text, failed_steps, last_error FROM payouts WHERE id = $1")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(state, "needs_review");
        assert_eq!(failed, 3);
        assert!(error.contains(why), "{error}");
        let reasons: Vec<String> =
            sqlx::query_scalar("SELECT reason FROM payout_events WHERE payout_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&app.db.pool)
                .await
                .unwrap();
        assert!(reasons.last().unwrap().starts_with("parked after 3 failed steps"), "{reasons:?}");
    }
    assert_eq!(app.state(ids[2]).await, PayoutState::Paid);
    app.shutdown().await;
}

// ---- item 8: Retry-After is capped -----------------------------------------------------------

#[tokio::test]
async fn item8_a_day_long_retry_after_is_capped() {
    let (mut options, _slot) = Tap::options(|| TapScript {
        check_answers: [Err(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(86_400)) })]
            .into(),
        ..TapScript::default()
    });
    options.engine.max_retry_after = Duration::from_secs(1);
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, "USD", "5.00").await[0];
    app.wait_for_state(id, PayoutState::Paid, Duration::from_secs(20)).await;
    let paused: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM provider_rate_limits WHERE provider = '8b_partner'")
            .fetch_optional(&app.db.pool)
            .await
            .unwrap()
            .flatten();
    let paused = paused.expect("the 429 paused the provider");
    assert!(paused < Utc::now() + chrono::Duration::seconds(2), "paused until {paused}");
    app.shutdown().await;
}
