//! Parsing of `WWW-Authenticate` headers (RFC 7235 challenges), with no I/O.

use std::collections::BTreeMap;

/// One authentication challenge: a scheme (lowercased) and its parameters (names lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in a `WWW-Authenticate` header value, such as
/// `Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"`.
/// Malformed parts are skipped, so the result may be empty.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut parser = Parser {
        bytes: header.as_bytes(),
        position: 0,
    };
    let mut challenges = Vec::new();

    while !parser.at_end() {
        parser.skip_while(|b| b == b' ' || b == b'\t' || b == b',');
        let Some(scheme) = parser.token() else {
            // Not a token: skip one byte and look for the next challenge.
            parser.position += 1;
            continue;
        };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        parser.read_params(&mut challenge.params);
        challenges.push(challenge);
    }
    challenges
}

struct Parser<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.position >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn skip_while(&mut self, predicate: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&predicate) {
            self.position += 1;
        }
    }

    fn skip_spaces(&mut self) {
        self.skip_while(|b| b == b' ' || b == b'\t');
    }

    /// Reads an RFC 7230 token.
    fn token(&mut self) -> Option<String> {
        let start = self.position;
        self.skip_while(is_token_byte);
        (self.position > start)
            .then(|| String::from_utf8_lossy(&self.bytes[start..self.position]).into_owned())
    }

    /// Reads a quoted string after its opening quote, resolving backslash escapes.
    fn quoted_rest(&mut self) -> String {
        let mut value = Vec::new();
        while let Some(byte) = self.peek() {
            self.position += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.position += 1;
                    }
                }
                other => value.push(other),
            }
        }
        String::from_utf8_lossy(&value).into_owned()
    }

    /// Reads `name=value` pairs until the header ends or a new challenge starts (a token that
    /// is not followed by `=`).
    fn read_params(&mut self, params: &mut BTreeMap<String, String>) {
        loop {
            self.skip_while(|b| b == b' ' || b == b'\t' || b == b',');
            let start = self.position;
            let Some(name) = self.token() else {
                return;
            };
            self.skip_spaces();
            if self.peek() != Some(b'=') {
                self.position = start;
                return;
            }
            self.position += 1;
            self.skip_spaces();

            let value = if self.peek() == Some(b'"') {
                self.position += 1;
                self.quoted_rest()
            } else {
                self.token().unwrap_or_default()
            };
            params.insert(name.to_ascii_lowercase(), value);
        }
    }
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bearer_challenge_from_distribution() {
        let header = r#"Bearer realm="http://127.0.0.1:5004/token",service="mayfly-test-registry",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges(header),
            vec![Challenge {
                scheme: "bearer".to_owned(),
                params: params(&[
                    ("realm", "http://127.0.0.1:5004/token"),
                    ("service", "mayfly-test-registry"),
                    ("scope", "repository:library/busybox:pull"),
                ]),
            }]
        );
    }

    #[test]
    fn basic_challenge_and_case() {
        let challenges = parse_challenges(r#"BASIC Realm="mayfly-test-registry""#);
        assert_eq!(challenges.len(), 1);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].param("realm"), Some("mayfly-test-registry"));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let header = r#"Basic realm="a", Bearer realm="https://t.test/token", service=reg , error="invalid_token""#;
        let challenges = parse_challenges(header);
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].params, params(&[("realm", "a")]));
        assert_eq!(challenges[1].scheme, "bearer");
        assert_eq!(
            challenges[1].params,
            params(&[
                ("realm", "https://t.test/token"),
                ("service", "reg"),
                ("error", "invalid_token"),
            ])
        );
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let header = r#"Bearer realm="https://t.test/token",scope="repository:a/b:pull,push",note="say \"hi\"""#;
        let challenge = &parse_challenges(header)[0];
        assert_eq!(challenge.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(challenge.param("note"), Some(r#"say "hi""#));
    }

    #[test]
    fn scheme_without_params_and_garbage() {
        assert_eq!(
            parse_challenges("Negotiate"),
            vec![Challenge {
                scheme: "negotiate".to_owned(),
                params: BTreeMap::new(),
            }]
        );
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(" , ,").is_empty());
        let unterminated = parse_challenges(r#"Bearer realm="http://x"#);
        assert_eq!(unterminated[0].param("realm"), Some("http://x"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics(header in ".{0,200}") {
                let _ = parse_challenges(&header);
            }

            #[test]
            fn parse_never_panics_on_header_alphabet(header in r#"[A-Za-z=", \\:/.]{0,100}"#) {
                let _ = parse_challenges(&header);
            }

            #[test]
            fn bearer_params_round_trip(
                realm in "[a-z0-9:/._-]{1,30}",
                service in "[a-z0-9._-]{1,20}",
                scope in "[a-z0-9:/,._-]{1,30}",
            ) {
                let header = format!(r#"Bearer realm="{realm}",service="{service}",scope="{scope}""#);
                let challenges = parse_challenges(&header);
                prop_assert_eq!(challenges.len(), 1);
                prop_assert_eq!(challenges[0].param("realm"), Some(realm.as_str()));
                prop_assert_eq!(challenges[0].param("service"), Some(service.as_str()));
                prop_assert_eq!(challenges[0].param("scope"), Some(scope.as_str()));
            }
        }
    }
}
