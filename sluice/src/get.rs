//! `sluice get`: the brokers, triggers and sources of a running `sluice run`, read from its admin API.

use crate::cli::GetArgs;
use anyhow::Context as _;

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/topology", args.admin);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let v: serde_json::Value = client
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
    println!(
        "{:<20} {:<20} {:<22} {:<6} REASON",
        "NAMESPACE", "BROKER", "CLASS", "READY"
    );
    for b in v["brokers"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<20} {:<22} {:<6} {}",
            b["namespace"].as_str().unwrap_or(""),
            b["name"].as_str().unwrap_or(""),
            b["class"].as_str().unwrap_or(""),
            if b["ready"].as_bool() == Some(true) {
                "True"
            } else {
                "False"
            },
            b["reason"].as_str().unwrap_or(""),
        );
    }
    println!();
    println!(
        "{:<20} {:<24} {:<20} SUBSCRIBER",
        "NAMESPACE", "TRIGGER", "BROKER"
    );
    for t in v["triggers"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<24} {:<20} {}",
            t["namespace"].as_str().unwrap_or(""),
            t["name"].as_str().unwrap_or(""),
            t["broker"].as_str().unwrap_or(""),
            t["subscriber"].as_str().unwrap_or(""),
        );
    }
    let sources = v["sources"].as_array().cloned().unwrap_or_default();
    if !sources.is_empty() {
        println!();
        println!(
            "{:<20} {:<24} {:<12} {:<6} {:<40} REASON",
            "NAMESPACE", "SOURCE", "KIND", "READY", "SINK"
        );
        for s in &sources {
            println!(
                "{:<20} {:<24} {:<12} {:<6} {:<40} {}",
                s["namespace"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or(""),
                s["kind"].as_str().unwrap_or(""),
                if s["ready"].as_bool() == Some(true) {
                    "True"
                } else {
                    "False"
                },
                s["sink"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or(""),
            );
        }
    }
    Ok(())
}
