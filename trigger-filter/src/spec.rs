//! The resource-facing filter types, as they appear in a Trigger's `spec.filters`.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One element of a Trigger's `spec.filters` (the CloudEvents Subscriptions API filter
/// dialects, as Knative Eventing accepts them, plus Sluice's `jsonpath`). Exactly one field must
/// be set; `sluice_filter::compile` checks that and everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// Kubernetes structural schemas forbid `additionalProperties: false` beside `properties`; the API
// server prunes unknown fields instead, and embedded mode rejects them through serde.
#[schemars(transform = allow_additional_properties)]
pub struct SubscriptionsApiFilter {
    /// Every listed attribute must exist and its value equal the given string exactly
    /// (case-sensitive).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_map"
    )]
    pub exact: Option<BTreeMap<String, String>>,
    /// Every listed attribute must exist and its value start with the given string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_map"
    )]
    pub prefix: Option<BTreeMap<String, String>>,
    /// Every listed attribute must exist and its value end with the given string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_map"
    )]
    pub suffix: Option<BTreeMap<String, String>>,
    /// Passes when every nested filter passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filter_list")]
    pub all: Option<Vec<SubscriptionsApiFilter>>,
    /// Passes when at least one nested filter passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filter_list")]
    pub any: Option<Vec<SubscriptionsApiFilter>>,
    /// Passes when the nested filter fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filter")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    /// A CloudEvents SQL v1 expression; passes when it evaluates to true without error. Also
    /// accepted under the name `sql`.
    #[serde(
        default,
        alias = "sql",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_string"
    )]
    pub cesql: Option<String>,
    /// Sluice extension: an RFC 9535 JSONPath query over the event's data, parsed as JSON;
    /// passes when it selects at least one node. Data that is absent or not JSON fails.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_string"
    )]
    pub jsonpath: Option<String>,
}

fn allow_additional_properties(schema: &mut schemars::Schema) {
    schema.remove("additionalProperties");
}

/// Nested filters are schemaless for Kubernetes (structural schemas cannot recurse, as in
/// Knative's own CRD); `compile` validates them.
fn nested_filter(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn nested_filter_list(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": nested_filter(generator),
    })
}

/// A YAML scalar as the string it was meant to be. YAML reads `cesql: true` as a boolean and
/// `exact: {version: 2}` as a number; both are taken as the strings `"true"` and `"2"`.
/// Floating-point numbers are refused, because their text is lost (`1.10` would become `1.1`).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Err(E::custom(format_args!(
                    "expected a string, found the number {v}: quote the value so its text is kept"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(|s| s.0))
}

fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let m = Option::<BTreeMap<String, Scalar>>::deserialize(d)?;
    Ok(m.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Result<Vec<SubscriptionsApiFilter>, serde_yaml::Error> {
        serde_yaml::from_str(s)
    }

    #[test]
    fn scalars_become_strings() {
        let f = yaml(
            "- cesql: true\n- sql: 5\n- exact: {version: 2, enabled: false}\n- jsonpath: $.a\n",
        )
        .unwrap();
        assert_eq!(f[0].cesql.as_deref(), Some("true"));
        assert_eq!(f[1].cesql.as_deref(), Some("5"));
        let exact = f[2].exact.as_ref().unwrap();
        assert_eq!(exact["version"], "2");
        assert_eq!(exact["enabled"], "false");
        assert_eq!(f[3].jsonpath.as_deref(), Some("$.a"));
    }

    #[test]
    fn floats_and_unknown_fields_are_refused() {
        let e = yaml("- exact: {version: 1.10}\n").unwrap_err().to_string();
        assert!(e.contains("quote the value"), "{e}");
        let e = yaml("- exakt: {type: a}\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `exakt`"), "{e}");
    }

    #[test]
    fn nested_round_trip() {
        let src = "- any:\n  - not: {prefix: {type: a.}}\n  - all: [{suffix: {source: /x}}, {cesql: \"EXISTS id\"}]\n";
        let f = yaml(src).unwrap();
        let back: Vec<SubscriptionsApiFilter> =
            serde_yaml::from_str(&serde_yaml::to_string(&f).unwrap()).unwrap();
        assert_eq!(f, back);
        let any = f[0].any.as_ref().unwrap();
        assert_eq!(
            any[0].not.as_ref().unwrap().prefix.as_ref().unwrap()["type"],
            "a."
        );
    }

    #[test]
    fn schema_is_kubernetes_friendly() {
        let schema = schemars::schema_for!(SubscriptionsApiFilter);
        let json = serde_json::to_value(&schema).unwrap();
        assert!(json.get("additionalProperties").is_none(), "{json:#}");
        let props = &json["properties"];
        for key in [
            "exact", "prefix", "suffix", "all", "any", "not", "cesql", "jsonpath",
        ] {
            assert!(props.get(key).is_some(), "missing {key} in {json:#}");
        }
        assert_eq!(
            props["not"]["x-kubernetes-preserve-unknown-fields"],
            serde_json::Value::Bool(true)
        );
        assert_eq!(props["all"]["type"], "array");
        // No recursion through `$ref`, which structural schemas cannot express.
        assert!(!json.to_string().contains("$ref"), "{json:#}");
    }
}
