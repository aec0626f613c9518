//! `sluice get`: every object of a running `sluice run` with its status, read from its
//! admin API.

use crate::cli::GetArgs;
use anyhow::Context as _;
use serde_json::Value;

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/topology", args.admin);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let v: Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| {
            format!(
                "no sluice admin API at {} (is `sluice run` running? pass --admin)",
                args.admin
            )
        })?
        .text()
        .await
        .context("reading the admin API's answer")?
        .parse()
        .context("the admin API answered something that is not JSON")?;
    print!("{}", render(&v));
    Ok(())
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// READY as Kubernetes prints it; REASON and the message together, as `kubectl get` shows
/// a condition.
fn ready_cols(v: &Value) -> (String, String) {
    let ready = match v["status"].as_str() {
        Some(r) => r.to_string(),
        None if v["ready"].as_bool() == Some(true) => "True".into(),
        None => "False".into(),
    };
    let reason = match (s(v, "reason"), s(v, "message")) {
        ("", "") => String::new(),
        (r, "") => r.to_string(),
        ("", m) => m.to_string(),
        (r, m) => format!("{r}: {m}"),
    };
    (ready, reason)
}

/// The tables `sluice get` prints.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:<20} {:<22} {:<8} {:<4} REASON\n",
        "NAMESPACE", "BROKER", "CLASS", "READY", "GEN"
    ));
    for b in v["brokers"].as_array().into_iter().flatten() {
        let (ready, reason) = ready_cols(b);
        out.push_str(&format!(
            "{:<16} {:<20} {:<22} {:<8} {:<4} {}\n",
            s(b, "namespace"),
            s(b, "name"),
            s(b, "class"),
            ready,
            b["observedGeneration"].as_i64().unwrap_or(0),
            reason
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<16} {:<24} {:<16} {:<8} {:<4} {:<36} REASON\n",
        "NAMESPACE", "TRIGGER", "BROKER", "READY", "GEN", "SUBSCRIBER"
    ));
    for t in v["triggers"].as_array().into_iter().flatten() {
        let (ready, reason) = ready_cols(t);
        out.push_str(&format!(
            "{:<16} {:<24} {:<16} {:<8} {:<4} {:<36} {}\n",
            s(t, "namespace"),
            s(t, "name"),
            s(t, "broker"),
            ready,
            t["observedGeneration"].as_i64().unwrap_or(0),
            s(t, "subscriber"),
            reason
        ));
    }
    let sources = v["sources"].as_array().cloned().unwrap_or_default();
    if !sources.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<24} {:<12} {:<8} {:<36} REASON\n",
            "NAMESPACE", "SOURCE", "KIND", "READY", "SINK"
        ));
        for src in &sources {
            let (ready, reason) = ready_cols(src);
            out.push_str(&format!(
                "{:<16} {:<24} {:<12} {:<8} {:<36} {}\n",
                s(src, "namespace"),
                s(src, "name"),
                s(src, "kind"),
                ready,
                s(src, "sink"),
                reason
            ));
        }
    }
    let services = v["services"].as_array().cloned().unwrap_or_default();
    if !services.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<24} {:<8} {:>7} {:>6} {:>5} {:>8} {:>6} {:<5} {:<40} REASON\n",
            "NAMESPACE",
            "SERVICE",
            "READY",
            "DESIRED",
            "ACTUAL",
            "RDY",
            "INFLIGHT",
            "QUEUED",
            "PANIC",
            "URL"
        ));
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        for svc in &services {
            let (ready, reason) = ready_cols(svc);
            out.push_str(&format!(
                "{:<16} {:<24} {:<8} {:>7} {:>6} {:>5} {:>8} {:>6} {:<5} {:<40} {}\n",
                s(svc, "namespace"),
                s(svc, "name"),
                ready,
                n(svc, "desired"),
                n(svc, "actual"),
                n(svc, "readyReplicas"),
                n(svc, "inFlight"),
                n(svc, "queued"),
                if svc["panic"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                s(svc, "url"),
                reason
            ));
        }
    }
    out
}
