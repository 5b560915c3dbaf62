//! DESIGN rule 10: the partner secret and API tokens never reach logs, stored events and
//! errors, or API answers, even when everything goes wrong.

use std::time::Duration;

use payoutd_sandbox::Faults;
use payoutd_tests::{AppOptions, PARTNER_SECRET, TestApp, payout_body, send_callback};

#[tokio::test(flavor = "current_thread")]
async fn secrets_stay_out_of_logs_events_errors_and_answers() {
    let captured = payoutd_tests::log_capture::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber());

    let faults = Faults {
        error_5xx_rate: 0.2,
        timeout_after_execute_rate: 0.2,
        timeout_delay: Duration::from_secs(1),
        rate_limit_rate: 0.1,
        decline_rate: 0.2,
        reject_rate: 0.1,
        ..Faults::default()
    };
    let app = TestApp::spawn(AppOptions { faults, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(app.enqueue(&token, &payout_body(&format!("s-{i}"), "10.00", "USD")).await);
    }
    // Bad input and a forged callback, so that error paths log too.
    let bad =
        app.http.post(format!("{}/v1/payouts", app.api)).bearer_auth(&token).body("{").send().await.unwrap();
    let bad_text = bad.text().await.unwrap();
    send_callback(&app, "PO000000000000000001", "10.00", "1", "forged").await;
    app.wait_all_final(Duration::from_secs(40)).await;

    let mut answers = bad_text;
    for id in &ids {
        let r =
            app.http.get(format!("{}/v1/payouts/{id}", app.api)).bearer_auth(&token).send().await.unwrap();
        answers.push_str(&r.text().await.unwrap());
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', reason, detail::text) FROM payout_events
         UNION ALL SELECT concat_ws(' ', last_error, submit_request::text, destination::text) FROM payouts
         UNION ALL SELECT concat_ws(' ', body, outcome) FROM provider_callbacks",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let connector_debug = format!("{:?} {:?}", app.connector_config, app.options.engine);
    app.shutdown().await;

    let logs = captured.text();
    assert!(logs.len() > 1000, "the scenario should have logged something ({} bytes)", logs.len());
    assert!(
        logs.contains("in doubt") || logs.contains("outcome unknown") || logs.contains("retry"),
        "faults were exercised"
    );
    for (what, text) in [
        ("logs", &logs),
        ("API answers", &answers),
        ("stored rows", &stored.join("\n")),
        ("Debug output", &connector_debug),
    ] {
        assert!(!text.contains(PARTNER_SECRET), "the partner secret leaked into {what}");
        assert!(!text.contains(&token), "an API token leaked into {what}");
    }
}
