//! Value types that read the way operators write them.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `"30s"`, `"5m"`, `"1h 30m"` (humantime syntax).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn std(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("`{s}` is not a duration like \"30s\" or \"5m\": {e}"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size written as `"10MB"`, `"512KB"`, `"1GiB"` or a plain number of bytes.
/// Decimal units (KB, MB, GB) are powers of 1000, binary ones (KiB, MiB, GiB) of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like \"10MB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "`{s}`: unknown size unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(mult).map(Self).ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A listening address, or none: `""` disables the listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl Listen {
    pub fn at(addr: std::net::SocketAddr) -> Self {
        Self(Some(addr))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(Self(None));
        }
        s.trim().parse().map(|a| Self(Some(a))).map_err(|_| {
            de::Error::custom(format!(
                "{s:?} is not an address like \"127.0.0.1:2587\" (or \"\" to disable)"
            ))
        })
    }
}

/// A secret string that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(<redacted>)" })
    }
}

/// `storage.encryption_key`: 32 bytes written as standard base64 (44 characters, e.g. the
/// output of `openssl rand -base64 32`), or `""` for none. Decoded once, here; never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncryptionKey(Option<[u8; 32]>);

impl EncryptionKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(Some(key))
    }
    /// The key's bytes; call only where data is sealed or opened.
    pub fn bytes(&self) -> Option<&[u8; 32]> {
        self.0.as_ref()
    }
}

impl std::str::FromStr for EncryptionKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(None));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| "is not base64; make one with `openssl rand -base64 32`".to_string())?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("decodes to {} bytes, not 32; make one with `openssl rand -base64 32`", b.len())
        })?;
        Ok(Self(Some(key)))
    }
}

impl<'de> Deserialize<'de> for EncryptionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_none() {
            "EncryptionKey(<none>)"
        } else {
            "EncryptionKey(<redacted>)"
        })
    }
}

impl Serialize for EncryptionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_none() { "" } else { "<redacted>" })
    }
}

// Serialized as they are written in the file (`postwire config check`); a secret never.

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.map(|a| a.to_string()).unwrap_or_default())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encryption_key_is_32_bytes_of_base64_or_nothing() {
        let key: EncryptionKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".parse().unwrap();
        let want: Vec<u8> = (0u8..32).collect();
        assert_eq!(key.bytes().map(|k| k.to_vec()), Some(want));
        assert_eq!("".parse::<EncryptionKey>().unwrap().bytes(), None);
        let short = "AAECAwQFBgcICQoLDA0ODw==".parse::<EncryptionKey>().unwrap_err();
        assert!(short.contains("16 bytes, not 32"), "{short}");
        assert!("not base64!".parse::<EncryptionKey>().unwrap_err().contains("not base64"));
        assert!(!format!("{key:?}").contains("AAEC"));
    }

    #[test]
    fn durations_and_sizes_parse_as_written() {
        assert_eq!("30s".parse::<Duration>().unwrap().std().as_secs(), 30);
        assert_eq!("5m".parse::<Duration>().unwrap().std().as_secs(), 300);
        assert!("soon".parse::<Duration>().is_err());
        assert_eq!("10MB".parse::<ByteSize>().unwrap().0, 10_000_000);
        assert_eq!("25 MB".parse::<ByteSize>().unwrap().0, 25_000_000);
        assert_eq!("1KiB".parse::<ByteSize>().unwrap().0, 1024);
        assert!("ten".parse::<ByteSize>().is_err());
        assert!("10XB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
