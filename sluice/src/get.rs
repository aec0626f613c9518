//! `sluice get`: every object of a running `sluice run` with its status, read from its
//! admin API.

use crate::cli::GetArgs;
use anyhow::Context as _;
use serde_json::Value;

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let path = match args.what.as_str() {
        "eventtypes" => "eventtypes",
        _ => "topology",
    };
    let url = format!("http://{}/{path}", args.admin);
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
    match path {
        "eventtypes" => print!("{}", render_event_types(&v)),
        _ => print!("{}", render(&v)),
    }
    Ok(())
}

/// The table `sluice get eventtypes` prints.
pub fn render_event_types(v: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<28} {:<36} {:<36} COUNT\n",
        "NAMESPACE", "REFERENCE", "TYPE", "SOURCE"
    );
    for e in v["eventTypes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<28} {:<36} {:<36} {}\n",
            s(e, "namespace"),
            s(e, "reference"),
            s(e, "type"),
            s(e, "source"),
            e["count"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(n) = v["overflow"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "({n} events of further types were not recorded: the registry keeps {} pairs)\n",
            v["capacity"].as_u64().unwrap_or(0)
        ));
    }
    out
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
        "{:<16} {:<20} {:<22} {:<8} {:<4} {:<44} REASON\n",
        "NAMESPACE", "BROKER", "CLASS", "READY", "GEN", "URL"
    ));
    for b in v["brokers"].as_array().into_iter().flatten() {
        let (ready, reason) = ready_cols(b);
        out.push_str(&format!(
            "{:<16} {:<20} {:<22} {:<8} {:<4} {:<44} {}\n",
            s(b, "namespace"),
            s(b, "name"),
            s(b, "class"),
            ready,
            b["observedGeneration"].as_i64().unwrap_or(0),
            s(b, "url"),
            reason
        ));
        // Permissive mode: the https address too (the URL column is the `address`).
        for a in b["addresses"].as_array().into_iter().flatten() {
            if a["url"] != b["url"] {
                out.push_str(&format!(
                    "{:<16} {:<20} {:<22} {:<8} {:<4} {}\n",
                    "",
                    "",
                    "",
                    "",
                    "",
                    s(a, "url")
                ));
            }
        }
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
    let channels = v["channels"].as_array().cloned().unwrap_or_default();
    if !channels.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<28} {:<20} {:<8} {:<4} {:<44} REASON\n",
            "NAMESPACE", "CHANNEL", "KIND", "READY", "GEN", "URL"
        ));
        for c in &channels {
            let (ready, reason) = ready_cols(c);
            out.push_str(&format!(
                "{:<16} {:<28} {:<20} {:<8} {:<4} {:<44} {}\n",
                s(c, "namespace"),
                s(c, "name"),
                s(c, "kind"),
                ready,
                c["observedGeneration"].as_i64().unwrap_or(0),
                s(c, "url"),
                reason
            ));
        }
    }
    let subscriptions = v["subscriptions"].as_array().cloned().unwrap_or_default();
    if !subscriptions.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<28} {:<24} {:<8} {:<36} {:<36} REASON\n",
            "NAMESPACE", "SUBSCRIPTION", "CHANNEL", "READY", "SUBSCRIBER", "REPLY"
        ));
        for sub in &subscriptions {
            let (ready, reason) = ready_cols(sub);
            out.push_str(&format!(
                "{:<16} {:<28} {:<24} {:<8} {:<36} {:<36} {}\n",
                s(sub, "namespace"),
                s(sub, "name"),
                s(sub, "channel"),
                ready,
                s(sub, "subscriber"),
                s(sub, "reply"),
                reason
            ));
        }
    }
    let flows = v["flows"].as_array().cloned().unwrap_or_default();
    if !flows.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<16} {:<24} {:<10} {:<8} {:<4} {:<44} REASON\n",
            "NAMESPACE", "FLOW", "KIND", "READY", "GEN", "URL"
        ));
        for f in &flows {
            let (ready, reason) = ready_cols(f);
            out.push_str(&format!(
                "{:<16} {:<24} {:<10} {:<8} {:<4} {:<44} {}\n",
                s(f, "namespace"),
                s(f, "name"),
                s(f, "kind"),
                ready,
                f["observedGeneration"].as_i64().unwrap_or(0),
                s(f, "url"),
                reason
            ));
        }
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
            "{:<16} {:<24} {:<8} {:>7} {:>6} {:>5} {:>8} {:>6} {:>7} {:<5} {:<40} REASON\n",
            "NAMESPACE",
            "SERVICE",
            "READY",
            "DESIRED",
            "ACTUAL",
            "RDY",
            "INFLIGHT",
            "QUEUED",
            "BACKLOG",
            "PANIC",
            "URL"
        ));
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        for svc in &services {
            let (ready, reason) = ready_cols(svc);
            out.push_str(&format!(
                "{:<16} {:<24} {:<8} {:>7} {:>6} {:>5} {:>8} {:>6} {:>7} {:<5} {:<40} {}\n",
                s(svc, "namespace"),
                s(svc, "name"),
                ready,
                n(svc, "desired"),
                n(svc, "actual"),
                n(svc, "readyReplicas"),
                n(svc, "inFlight"),
                n(svc, "queued"),
                n(svc, "backlog"),
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
