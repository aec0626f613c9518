//! `autoscaling.knative.dev/*` annotations → [`ScalingSpec`], with Knative's defaults and
//! validation rules (SEMANTICS.md §13), every problem named by its annotation.
//!
//! Validated once when resources are loaded, so the scaler never meets a bad value.

use sluice_core::topology::ScalingSpec;
use std::collections::BTreeMap;
use std::time::Duration;

/// The annotation prefix of Knative's autoscaling settings.
pub const PREFIX: &str = "autoscaling.knative.dev/";
/// Sluice: the scale-to-zero grace period (Knative reads it from `config-autoscaler`, which
/// embedded mode does not have).
pub const GRACE: &str = "sluice.dev/scale-to-zero-grace-period";

/// One invalid annotation: its full name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub annotation: String,
    pub message: String,
}

/// Reads the autoscaling annotations of a Service whose container takes
/// `container_concurrency` requests at once (0 = unlimited). Unknown
/// `autoscaling.knative.dev/*` keys are refused (a typo would silently change nothing).
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
    container_concurrency: u32,
) -> Result<ScalingSpec, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut spec = ScalingSpec::default();
    if container_concurrency > 0 {
        spec.target = container_concurrency as f64;
    }
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            annotation: key.to_string(),
            message,
        })
    };
    // (annotation, camelCase alias)
    let get = |name: &str| -> Option<(String, &str)> {
        let camel = match name {
            "min-scale" => Some("minScale"),
            "max-scale" => Some("maxScale"),
            "initial-scale" => Some("initialScale"),
            "target-utilization-percentage" => Some("targetUtilizationPercentage"),
            _ => None,
        };
        let key = format!("{PREFIX}{name}");
        if let Some(v) = annotations.get(&key) {
            return Some((key, v.as_str()));
        }
        let key = format!("{PREFIX}{}", camel?);
        annotations.get(&key).map(|v| (key, v.as_str()))
    };
    const KNOWN: &[&str] = &[
        "min-scale",
        "minScale",
        "max-scale",
        "maxScale",
        "initial-scale",
        "initialScale",
        "activation-scale",
        "target",
        "target-utilization-percentage",
        "targetUtilizationPercentage",
        "window",
        "panic-window-percentage",
        "panic-threshold-percentage",
        "scale-down-delay",
        "metric",
        "class",
    ];
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(PREFIX) {
            if !KNOWN.contains(&name) {
                problem(
                    key,
                    format!(
                        "unknown autoscaling annotation; Sluice reads {PREFIX}{{{}}}",
                        KNOWN.join(", ")
                    ),
                );
            }
        }
    }

    let int = |key: &str, v: &str, problem: &mut dyn FnMut(&str, String)| -> Option<u32> {
        match v.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                problem(key, format!("{v:?} is not a whole number ≥ 0"));
                None
            }
        }
    };
    let number =
        |key: &str, v: &str, lo: f64, hi: f64, problem: &mut dyn FnMut(&str, String)| match v
            .trim()
            .parse::<f64>()
        {
            Ok(n) if n.is_finite() && n >= lo && n <= hi => Some(n),
            _ => {
                problem(key, format!("{v:?} must be a number from {lo} to {hi}"));
                None
            }
        };
    if let Some((k, v)) = get("min-scale") {
        spec.min_scale = int(&k, v, &mut problem).unwrap_or(0);
    }
    if let Some((k, v)) = get("max-scale") {
        spec.max_scale = int(&k, v, &mut problem).unwrap_or(0);
        if spec.max_scale != 0 && spec.max_scale < spec.min_scale {
            problem(
                &k,
                format!(
                    "max-scale {} is below min-scale {}; raise it or use 0 (unlimited)",
                    spec.max_scale, spec.min_scale
                ),
            );
        }
    }
    if let Some((k, v)) = get("initial-scale") {
        // Sluice: embedded mode behaves as Knative with `allow-zero-initial-scale: true`.
        spec.initial_scale = int(&k, v, &mut problem).unwrap_or(1);
    }
    if let Some((k, v)) = get("activation-scale") {
        if let Some(n) = int(&k, v, &mut problem) {
            if n < 2 {
                problem(
                    &k,
                    format!("{n}: activation-scale must be at least 2 when set (1 is the default)"),
                );
            } else if n < spec.min_scale || (spec.max_scale != 0 && n > spec.max_scale) {
                problem(
                    &k,
                    format!(
                        "{n} must lie between min-scale {} and max-scale {}",
                        spec.min_scale, spec.max_scale
                    ),
                );
            } else {
                spec.activation_scale = n;
            }
        }
    }
    if let Some((k, v)) = get("target") {
        if let Some(t) = number(&k, v, 0.01, f64::MAX, &mut problem) {
            spec.target = t;
        }
    }
    if let Some((k, v)) = get("target-utilization-percentage") {
        if let Some(p) = number(&k, v, 1.0, 100.0, &mut problem) {
            spec.utilization = p / 100.0;
        }
    }
    if let Some((k, v)) = get("window") {
        match parse_go_duration(v) {
            Ok(d)
                if d.subsec_nanos() == 0
                    && d >= Duration::from_secs(6)
                    && d <= Duration::from_secs(3600) =>
            {
                spec.stable_window = d
            }
            Ok(_) => problem(&k, format!("{v:?} must be whole seconds from 6s to 1h")),
            Err(e) => problem(&k, e),
        }
    }
    if let Some((k, v)) = get("panic-window-percentage") {
        if let Some(p) = number(&k, v, 1.0, 100.0, &mut problem) {
            spec.panic_window_percentage = p;
        }
    }
    if let Some((k, v)) = get("panic-threshold-percentage") {
        if let Some(p) = number(&k, v, 110.0, 1000.0, &mut problem) {
            spec.panic_threshold_percentage = p;
        }
    }
    if let Some((k, v)) = get("scale-down-delay") {
        match parse_go_duration(v) {
            Ok(d) if d.subsec_nanos() == 0 && d <= Duration::from_secs(3600) => {
                spec.scale_down_delay = d
            }
            Ok(_) => problem(&k, format!("{v:?} must be whole seconds from 0s to 1h")),
            Err(e) => problem(&k, e),
        }
    }
    if let Some((k, v)) = get("metric") {
        if v != "concurrency" {
            problem(
                &k,
                format!("{v:?}: Sluice scales on `concurrency` only (rps is not supported yet)"),
            );
        }
    }
    if let Some((k, v)) = get("class") {
        if v != "kpa.autoscaling.knative.dev" {
            problem(
                &k,
                format!("{v:?}: Sluice runs the KPA only (`kpa.autoscaling.knative.dev`)"),
            );
        }
    }
    if let Some(v) = annotations.get(GRACE) {
        match parse_go_duration(v) {
            Ok(d) if d <= Duration::from_secs(3600) => spec.scale_to_zero_grace = d,
            Ok(_) => problem(GRACE, format!("{v:?} must be at most 1h")),
            Err(e) => problem(GRACE, e),
        }
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// A Go `time.Duration` string as Knative writes them: `60s`, `1m30s`, `1h`, `500ms`, `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 60s, 1m30s or 1h");
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(n * unit);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn knative_defaults() {
        let s = from_annotations(&BTreeMap::new(), 0).unwrap();
        assert_eq!(s, ScalingSpec::default());
        assert_eq!(s.target, 100.0);
        assert_eq!(s.utilization, 0.7);
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.panic_window_percentage, 10.0);
        assert_eq!(s.panic_threshold_percentage, 200.0);
        assert_eq!(s.max_scale_up_rate, 1000.0);
        assert_eq!(s.max_scale_down_rate, 2.0);
        assert_eq!(s.scale_to_zero_grace, Duration::from_secs(30));
        assert_eq!(s.tick, Duration::from_secs(2));
        assert_eq!(
            (
                s.min_scale,
                s.max_scale,
                s.initial_scale,
                s.activation_scale
            ),
            (0, 0, 1, 1)
        );
        // The target follows containerConcurrency when it is set.
        assert_eq!(from_annotations(&BTreeMap::new(), 10).unwrap().target, 10.0);
    }

    #[test]
    fn every_annotation_is_read() {
        let s = from_annotations(
            &ann(&[
                ("autoscaling.knative.dev/min-scale", "1"),
                ("autoscaling.knative.dev/max-scale", "5"),
                ("autoscaling.knative.dev/initial-scale", "0"),
                ("autoscaling.knative.dev/activation-scale", "3"),
                ("autoscaling.knative.dev/target", "7.5"),
                (
                    "autoscaling.knative.dev/target-utilization-percentage",
                    "50",
                ),
                ("autoscaling.knative.dev/window", "1m30s"),
                ("autoscaling.knative.dev/panic-window-percentage", "20"),
                ("autoscaling.knative.dev/panic-threshold-percentage", "150"),
                ("autoscaling.knative.dev/scale-down-delay", "15s"),
                ("autoscaling.knative.dev/metric", "concurrency"),
                ("sluice.dev/scale-to-zero-grace-period", "2s"),
            ]),
            4,
        )
        .unwrap();
        assert_eq!(
            (
                s.min_scale,
                s.max_scale,
                s.initial_scale,
                s.activation_scale
            ),
            (1, 5, 0, 3)
        );
        assert_eq!(s.target, 7.5);
        assert_eq!(s.utilization, 0.5);
        assert_eq!(s.stable_window, Duration::from_secs(90));
        assert_eq!(s.panic_window_percentage, 20.0);
        assert_eq!(s.panic_threshold_percentage, 150.0);
        assert_eq!(s.scale_down_delay, Duration::from_secs(15));
        assert_eq!(s.scale_to_zero_grace, Duration::from_secs(2));
        // camelCase spellings work too.
        let s = from_annotations(
            &ann(&[
                ("autoscaling.knative.dev/minScale", "2"),
                ("autoscaling.knative.dev/maxScale", "3"),
                ("autoscaling.knative.dev/initialScale", "2"),
                ("autoscaling.knative.dev/targetUtilizationPercentage", "100"),
            ]),
            0,
        )
        .unwrap();
        assert_eq!(
            (s.min_scale, s.max_scale, s.initial_scale, s.utilization),
            (2, 3, 2, 1.0)
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let table: &[(&str, &str, &str)] = &[
            ("min-scale", "-1", "whole number"),
            ("max-scale", "x", "whole number"),
            ("target", "0", "from 0.01"),
            ("target-utilization-percentage", "0", "from 1 to 100"),
            ("target-utilization-percentage", "101", "from 1 to 100"),
            ("window", "5s", "6s to 1h"),
            ("window", "2h", "6s to 1h"),
            ("window", "6500ms", "whole seconds"),
            ("window", "soon", "not a duration"),
            ("scale-down-delay", "61m", "0s to 1h"),
            ("activation-scale", "1", "at least 2"),
            ("panic-threshold-percentage", "100", "from 110 to 1000"),
            ("panic-window-percentage", "0", "from 1 to 100"),
            ("metric", "rps", "concurrency"),
            ("class", "hpa.autoscaling.knative.dev", "KPA"),
            ("maxscale", "3", "unknown autoscaling annotation"),
        ];
        for (name, value, want) in table {
            let key = format!("{PREFIX}{name}");
            let e = from_annotations(&ann(&[(&key, value)]), 0).unwrap_err();
            assert_eq!(e.len(), 1, "{name}={value}: {e:?}");
            assert_eq!(e[0].annotation, key);
            assert!(
                e[0].message.contains(want),
                "{name}={value}: {}",
                e[0].message
            );
        }
        let e = from_annotations(
            &ann(&[
                ("autoscaling.knative.dev/min-scale", "4"),
                ("autoscaling.knative.dev/max-scale", "2"),
            ]),
            0,
        )
        .unwrap_err();
        assert!(e[0].message.contains("below min-scale 4"), "{e:?}");
        let e = from_annotations(
            &ann(&[
                ("autoscaling.knative.dev/max-scale", "2"),
                ("autoscaling.knative.dev/activation-scale", "3"),
            ]),
            0,
        )
        .unwrap_err();
        assert!(e[0].message.contains("between"), "{e:?}");
    }

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_go_duration("0").unwrap(), s(0));
        assert_eq!(parse_go_duration("60s").unwrap(), s(60));
        assert_eq!(parse_go_duration("1m30s").unwrap(), s(90));
        assert_eq!(parse_go_duration("1h").unwrap(), s(3600));
        assert_eq!(
            parse_go_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "s", "10", "1d", "1 m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
