//! `fabric://<instance>/<bucket>/<key>`: the address of an object.

use std::fmt;
use std::str::FromStr;

use crate::segment::validate_instance;

/// The scheme every address starts with.
pub const SCHEME: &str = "fabric://";
/// Longest bucket name in bytes.
pub const MAX_BUCKET_LEN: usize = 63;
/// Longest key in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The address of an object: an instance, a bucket in it and a key.
///
/// ```
/// use grafos_worker::store::FabricUri;
/// let uri: FabricUri = "fabric://default/images/2026/cat.png".parse()?;
/// assert_eq!((uri.instance(), uri.bucket(), uri.key()), ("default", "images", "2026/cat.png"));
/// assert_eq!(uri.to_string(), "fabric://default/images/2026/cat.png");
/// assert!("fabric://default/images/".parse::<FabricUri>().is_err());
/// # Ok::<(), grafos_worker::store::UriError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FabricUri {
    instance: String,
    bucket: String,
    key: String,
}

/// Which part of an address is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriPart {
    /// `<instance>`.
    Instance,
    /// `<bucket>`.
    Bucket,
    /// `<key>`.
    Key,
}

impl fmt::Display for UriPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriPart::Instance => "instance",
            UriPart::Bucket => "bucket",
            UriPart::Key => "key",
        })
    }
}

/// Why a string is not a [`FabricUri`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// It does not start with `fabric://`.
    #[error("{uri:?} does not start with {SCHEME}")]
    Scheme {
        /// The text given.
        uri: String,
    },
    /// A part is empty, or missing.
    #[error("{uri:?} has no {part} (fabric://<instance>/<bucket>/<key>)")]
    Empty {
        /// The text given.
        uri: String,
        /// The part.
        part: UriPart,
    },
    /// A part is longer than allowed.
    #[error("the {part} of {uri:?} is {len} bytes; at most {max}")]
    TooLong {
        /// The text given.
        uri: String,
        /// The part.
        part: UriPart,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character a part may not hold.
    #[error("the {part} of {uri:?} holds {found:?} at byte {at}; {allowed}")]
    BadCharacter {
        /// The text given.
        uri: String,
        /// The part.
        part: UriPart,
        /// The character.
        found: char,
        /// Its byte offset in the part.
        at: usize,
        /// What the part may hold.
        allowed: &'static str,
    },
    /// The key has an empty path segment (`a//b`, or a `/` at an end).
    #[error("the key of {uri:?} has an empty segment (a '/' at an end, or '//')")]
    EmptySegment {
        /// The text given.
        uri: String,
    },
}

const BUCKET_CHARS: &str = "buckets use a-z 0-9 . _ -";
const KEY_CHARS: &str = "keys use A-Z a-z 0-9 and - . _ ~ / ! $ & ' ( ) * + , ; = : @";

impl FabricUri {
    /// The address of `key` in `bucket` of `instance`.
    ///
    /// # Errors
    /// As for parsing: an empty, over-long or badly spelt part.
    pub fn new(instance: &str, bucket: &str, key: &str) -> Result<FabricUri, UriError> {
        format!("{SCHEME}{instance}/{bucket}/{key}").parse()
    }

    /// The instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key (may hold `/`).
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl FromStr for FabricUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<FabricUri, UriError> {
        let owned = || uri.to_owned();
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| UriError::Scheme { uri: owned() })?;
        let empty = |part| UriError::Empty { uri: owned(), part };
        let (instance, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if instance.is_empty() {
            return Err(empty(UriPart::Instance));
        }
        if bucket.is_empty() {
            return Err(empty(UriPart::Bucket));
        }
        if key.is_empty() {
            return Err(empty(UriPart::Key));
        }
        if let Some(at) = instance
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b"_-".contains(&b)))
        {
            return Err(UriError::BadCharacter {
                uri: owned(),
                part: UriPart::Instance,
                found: char_at(instance, at),
                at,
                allowed: "instances use A-Z a-z 0-9 _ -",
            });
        }
        if validate_instance(instance).is_err() {
            return Err(UriError::TooLong {
                uri: owned(),
                part: UriPart::Instance,
                len: instance.len(),
                max: crate::segment::MAX_INSTANCE_LEN,
            });
        }
        check(
            uri,
            UriPart::Bucket,
            bucket,
            MAX_BUCKET_LEN,
            BUCKET_CHARS,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b),
        )?;
        check(uri, UriPart::Key, key, MAX_KEY_LEN, KEY_CHARS, |b| {
            b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b)
        })?;
        if key.starts_with('/') || key.ends_with('/') || key.contains("//") {
            return Err(UriError::EmptySegment { uri: owned() });
        }
        Ok(FabricUri {
            instance: instance.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// Checks a part's length and characters.
fn check(
    uri: &str,
    part: UriPart,
    text: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), UriError> {
    if text.len() > max {
        return Err(UriError::TooLong {
            uri: uri.to_owned(),
            part,
            len: text.len(),
            max,
        });
    }
    match text.bytes().position(|b| !ok(b)) {
        Some(at) => Err(UriError::BadCharacter {
            uri: uri.to_owned(),
            part,
            found: char_at(text, at),
            at,
            allowed,
        }),
        None => Ok(()),
    }
}

/// The character starting at byte `at` (or U+FFFD inside one).
fn char_at(text: &str, at: usize) -> char {
    text.get(at..)
        .and_then(|s| s.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

impl fmt::Display for FabricUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}/{}", self.instance, self.bucket, self.key)
    }
}

impl From<UriError> for crate::FabricError {
    fn from(e: UriError) -> crate::FabricError {
        crate::FabricError::InvalidArgument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(uri: &str) -> UriError {
        uri.parse::<FabricUri>().expect_err(uri)
    }

    #[test]
    fn addresses_round_trip() {
        for uri in [
            "fabric://default/events/order-1",
            "fabric://a/b/c",
            "fabric://inst_2/my.bucket-1/2026/11/23/report.json",
            "fabric://default/b/k~!$&'()*+,;=:@",
        ] {
            let parsed: FabricUri = uri.parse().unwrap();
            assert_eq!(parsed.to_string(), uri);
            let again = FabricUri::new(parsed.instance(), parsed.bucket(), parsed.key()).unwrap();
            assert_eq!(again, parsed);
        }
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        assert!(matches!(err("http://default/b/k"), UriError::Scheme { .. }));
        assert!(matches!(
            err("fabric:/default/b/k"),
            UriError::Scheme { .. }
        ));
        for (uri, part) in [
            ("fabric://", UriPart::Instance),
            ("fabric:///b/k", UriPart::Instance),
            ("fabric://default", UriPart::Bucket),
            ("fabric://default//k", UriPart::Bucket),
            ("fabric://default/b", UriPart::Key),
            ("fabric://default/b/", UriPart::Key),
        ] {
            assert_eq!(
                err(uri),
                UriError::Empty {
                    uri: uri.into(),
                    part
                },
                "{uri}"
            );
        }
        let bad = |uri: &str| match err(uri) {
            UriError::BadCharacter {
                part, found, at, ..
            } => (part, found, at),
            other => panic!("{uri}: {other:?}"),
        };
        assert_eq!(bad("fabric://de fault/b/k"), (UriPart::Instance, ' ', 2));
        assert_eq!(bad("fabric://default/Bucket/k"), (UriPart::Bucket, 'B', 0));
        assert_eq!(bad("fabric://default/b/a?x"), (UriPart::Key, '?', 1));
        assert_eq!(
            bad("fabric://default/b/caf\u{e9}"),
            (UriPart::Key, '\u{e9}', 3)
        );
        assert_eq!(bad("fabric://default/b/a%20b"), (UriPart::Key, '%', 1));
        for uri in ["fabric://d/b//k", "fabric://d/b/k/", "fabric://d/b/a//k"] {
            assert!(matches!(err(uri), UriError::EmptySegment { .. }), "{uri}");
        }
        let long_key = format!("fabric://d/b/{}", "k".repeat(MAX_KEY_LEN + 1));
        assert!(matches!(
            err(&long_key),
            UriError::TooLong {
                part: UriPart::Key,
                len: 1025,
                max: 1024,
                ..
            }
        ));
        let long_bucket = format!("fabric://d/{}/k", "b".repeat(MAX_BUCKET_LEN + 1));
        assert!(matches!(
            err(&long_bucket),
            UriError::TooLong {
                part: UriPart::Bucket,
                ..
            }
        ));
        let long_instance = format!("fabric://{}/b/k", "i".repeat(49));
        assert!(matches!(
            err(&long_instance),
            UriError::TooLong {
                part: UriPart::Instance,
                ..
            }
        ));
        // The message names the part and the rule.
        let message = err("fabric://default/Bucket/k").to_string();
        assert!(
            message.contains("bucket") && message.contains("a-z 0-9"),
            "{message}"
        );
    }
}
