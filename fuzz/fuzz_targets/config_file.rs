//! The config file: `payoutd::config::Config::from_toml_str` (what `Config::load` does with the
//! file's text), then the conversions startup makes from it.
//!
//! Properties: no panic, neither in parsing nor in turning an accepted config into the engine,
//! connector and HTTP settings; parsing is a function of the text; and the `Debug` output (what
//! ends up in logs) does not depend on the value of any secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use payoutd::config::Config;
use payoutd_core::Secret;

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file with `read_to_string`: text that is not UTF-8 never
    // reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml_str(text) else { return };
    let debug = format!("{config:?}");
    let again = Config::from_toml_str(text).expect("parsing is a function of the text");
    assert_eq!(format!("{again:?}"), debug);

    // Startup turns the settings into durations and limits: no value the parser accepted may
    // crash it.
    let _ = config.engine.engine_config();
    let _ = config.http.limits();
    if let Some(partner) = &config.eightb_partner {
        let _ = partner.connector_config();
    }

    // Secrets do not reach Debug output: replacing them changes nothing there.
    let mut other = config.clone();
    if other.database_url.is_some() {
        other.database_url = Some(Secret::new("postgres://other:other@elsewhere/other"));
    }
    if let Some(partner) = other.eightb_partner.as_mut() {
        partner.secret = Secret::new("a-different-secret");
    }
    assert_eq!(format!("{other:?}"), debug, "a secret's value shows in Debug output");
});
