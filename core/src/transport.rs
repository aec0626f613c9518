//! Knative's `transport-encryption` feature (SEMANTICS.md §11): whether the ingress serves
//! plain HTTP, HTTPS, or both, and which of those addresses objects publish.
//!
//! One value decides three things, so they can never disagree: which listener serves events
//! ([`TransportEncryption::serves_http`] / [`serves_https`](TransportEncryption::serves_https)),
//! and which URLs go into `status.address` / `status.addresses`
//! ([`TransportEncryption::addresses`]).

use std::fmt;

/// The key in Knative's `config-features` ConfigMap.
pub const CONFIG_KEY: &str = "transport-encryption";
/// The ConfigMap (in the system namespace) holding Knative's feature flags.
pub const CONFIG_FEATURES: &str = "config-features";

/// `transport-encryption`: disabled (the default), permissive or strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportEncryption {
    /// Plain HTTP only; HTTPS requests get 404.
    #[default]
    Disabled,
    /// Both; objects publish the http address first and list https too.
    Permissive,
    /// HTTPS only; plain HTTP requests get 404.
    Strict,
}

impl TransportEncryption {
    /// Parses a value as Knative writes it (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disabled" => Ok(Self::Disabled),
            "permissive" => Ok(Self::Permissive),
            "strict" => Ok(Self::Strict),
            other => Err(format!(
                "transport-encryption {other:?} is not one of disabled, permissive, strict"
            )),
        }
    }

    /// The mode in the data of a `config-features` ConfigMap; absent → disabled.
    pub fn from_features<'a>(
        mut data: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        match data.find(|(k, _)| *k == CONFIG_KEY) {
            Some((_, v)) => Self::parse(v),
            None => Ok(Self::Disabled),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Permissive => "permissive",
            Self::Strict => "strict",
        }
    }

    /// Events are taken over plain HTTP.
    pub fn serves_http(self) -> bool {
        self != Self::Strict
    }

    /// Events are taken over HTTPS.
    pub fn serves_https(self) -> bool {
        self != Self::Disabled
    }

    /// What an object publishes: `(address, addresses)`, each a `(name, url)` pair, from
    /// its http URL and its https URL (if the ingress has one). Knative: disabled → http;
    /// permissive → address http, addresses [https, http]; strict → https only. Without an
    /// https URL there is nothing else to publish than http.
    pub fn addresses<'a>(
        self,
        http: &'a str,
        https: Option<&'a str>,
    ) -> (Address<'a>, Vec<Address<'a>>) {
        let h = Address {
            name: "http",
            url: http,
        };
        match (self, https) {
            (Self::Disabled, _) | (_, None) => (h, vec![h]),
            (Self::Permissive, Some(s)) => {
                let s = Address {
                    name: "https",
                    url: s,
                };
                (h, vec![s, h])
            }
            (Self::Strict, Some(s)) => {
                let s = Address {
                    name: "https",
                    url: s,
                };
                (s, vec![s])
            }
        }
    }
}

/// One published address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    pub name: &'static str,
    pub url: &'a str,
}

impl fmt::Display for TransportEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TransportEncryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportEncryption::*;

    #[test]
    fn parses_knative_values_case_insensitively() {
        let cases = [
            ("disabled", Ok(Disabled)),
            ("Permissive", Ok(Permissive)),
            (" STRICT ", Ok(Strict)),
            ("enabled", Err(())),
            ("", Err(())),
        ];
        for (s, want) in cases {
            assert_eq!(TransportEncryption::parse(s).map_err(|_| ()), want, "{s:?}");
        }
        let e = TransportEncryption::parse("on").unwrap_err();
        assert!(e.contains("disabled, permissive, strict"), "{e}");
        let none: [(&str, &str); 1] = [("authentication-oidc", "enabled")];
        assert_eq!(
            TransportEncryption::from_features(none.into_iter()),
            Ok(Disabled)
        );
        let set = [(CONFIG_KEY, "strict")];
        assert_eq!(
            TransportEncryption::from_features(set.into_iter()),
            Ok(Strict)
        );
    }

    /// SEMANTICS.md §11: what each mode serves and publishes.
    #[test]
    fn modes_serve_and_publish_as_knative_does() {
        let (h, s) = ("http://i/ns/b", "https://i/ns/b");
        let a = |name, url| Address { name, url };
        let cases = [
            (Disabled, true, false, a("http", h), vec![a("http", h)]),
            (
                Permissive,
                true,
                true,
                a("http", h),
                vec![a("https", s), a("http", h)],
            ),
            (Strict, false, true, a("https", s), vec![a("https", s)]),
        ];
        for (mode, http, https, address, addresses) in cases {
            assert_eq!(mode.serves_http(), http, "{mode}");
            assert_eq!(mode.serves_https(), https, "{mode}");
            assert_eq!(mode.addresses(h, Some(s)), (address, addresses), "{mode}");
        }
        // No https URL known: only http is published, whatever the mode.
        assert_eq!(
            Strict.addresses(h, None),
            (a("http", h), vec![a("http", h)])
        );
    }
}
