//! Ed25519 signatures over the exact feed bytes, checked against a pinned public key.
//!
//! - The public key file holds either a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as
//!   `openssl pkey -pubout` writes it) or the raw 32-byte key in base64 or hex.
//! - The detached signature (`FEED.sig` beside a file, `URL.sig` for a URL) holds the raw
//!   64-byte signature in base64 (as `openssl pkeyutl -sign -rawin | base64 -w0` writes it)
//!   or hex. Surrounding white space is ignored.
//!
//! Verification is strict (RFC 8032 with the checks of `verify_strict`: no small-order keys,
//! no malleable signatures).
//!
//! Several keys may be pinned at once ([`Keyring`]): during a key rollover a gateway accepts
//! a feed signed by either the outgoing or the incoming key. The signing side
//! ([`SecretKey`], used by `vpn-filter registry keygen` and `publish`) writes the same formats
//! OpenSSL does: the private key as a PEM `PRIVATE KEY` (PKCS#8), the public key as a PEM
//! `PUBLIC KEY`, the signature in base64.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } followed by the 32 key bytes.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 section 7, as `openssl genpkey
/// -algorithm ed25519` writes it): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32 bytes) } } followed by the 32 seed bytes.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Standard base64, with or without padding.
const BASE64_ANY_PADDING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Largest signature file accepted (a base64 signature is 88 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read the public key {path}: {err}")]
    ReadKey { path: String, err: std::io::Error },
    #[error("the public key {path} is not an Ed25519 key: {why} (expected a PEM PUBLIC KEY as written by `openssl pkey -pubout`, or the raw 32-byte key in base64 or hex)")]
    BadKey { path: String, why: String },
    #[error("the feed is not signed: no signature at {at} (a public key is configured, so unsigned feeds are refused)")]
    Missing { at: String },
    #[error("the signature at {at} is unreadable: {why} (expected the 64-byte Ed25519 signature in base64 or hex)")]
    BadEncoding { at: String, why: String },
    #[error("BAD SIGNATURE: the signature at {at} does not match the feed bytes under the pinned key {key} (feed tampered with, truncated, or signed with another key)")]
    Mismatch { at: String, key: String },
    #[error("cannot read the private key {path}: {err}")]
    ReadSecret { path: String, err: std::io::Error },
    #[error("the private key {path} is not an Ed25519 private key: {why} (expected a PEM PRIVATE KEY as written by `vpn-filter registry keygen` or `openssl genpkey -algorithm ed25519`)")]
    BadSecret { path: String, why: String },
}

/// The pinned key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Reads a key file (PEM SubjectPublicKeyInfo, or raw 32 bytes in base64/hex).
    pub fn from_file(path: &Path) -> Result<PublicKey, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|err| SignatureError::ReadKey {
            path: path.display().to_string(),
            err,
        })?;
        PublicKey::parse(&text).map_err(|why| SignatureError::BadKey {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses a key: PEM SubjectPublicKeyInfo, or raw 32 bytes in base64/hex.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        let raw: [u8; 32] = if text.starts_with("-----BEGIN") {
            if !text.starts_with("-----BEGIN PUBLIC KEY-----") {
                return Err(format!(
                    "PEM block \"{}\" is not a PUBLIC KEY",
                    text.lines().next().unwrap_or_default()
                ));
            }
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| format!("PEM body is not base64: {e}"))?;
            match der.strip_prefix(&SPKI_ED25519_PREFIX[..]) {
                Some(k) if k.len() == 32 => k.try_into().expect("length checked"),
                _ => {
                    return Err(
                        "the PEM key is not Ed25519 (algorithm OID 1.3.101.112 expected)".into(),
                    )
                }
            }
        } else {
            let bytes = decode_base64_or_hex(text)?;
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("{} bytes, an Ed25519 key has 32", bytes.len()))?
        };
        let key = VerifyingKey::from_bytes(&raw).map_err(|e| format!("invalid key: {e}"))?;
        Ok(PublicKey { key })
    }

    pub fn from_bytes(raw: &[u8; 32]) -> Result<PublicKey, String> {
        let key = VerifyingKey::from_bytes(raw).map_err(|e| format!("invalid key: {e}"))?;
        Ok(PublicKey { key })
    }

    /// The key in base64, to name it in messages.
    pub fn fingerprint(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes())
    }

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubout`
    /// writes it; [`PublicKey::parse`] reads it back.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        pem("PUBLIC KEY", &der)
    }

    /// Checks `signature` (the signature file's content; `None` when there is none) over
    /// `feed`. `at` names where the signature came from.
    pub fn verify(
        &self,
        feed: &[u8],
        signature: Option<&[u8]>,
        at: &str,
    ) -> Result<(), SignatureError> {
        let Some(sig_text) = signature else {
            return Err(SignatureError::Missing { at: at.to_string() });
        };
        let text = std::str::from_utf8(sig_text).map_err(|_| SignatureError::BadEncoding {
            at: at.to_string(),
            why: "not text".into(),
        })?;
        let bytes =
            decode_base64_or_hex(text.trim()).map_err(|why| SignatureError::BadEncoding {
                at: at.to_string(),
                why,
            })?;
        let raw: [u8; 64] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SignatureError::BadEncoding {
                    at: at.to_string(),
                    why: format!("{} bytes, an Ed25519 signature has 64", bytes.len()),
                })?;
        let sig = Signature::from_bytes(&raw);
        self.key
            .verify_strict(feed, &sig)
            .map_err(|_| SignatureError::Mismatch {
                at: at.to_string(),
                key: self.fingerprint(),
            })
    }
}

/// Several pinned keys: a feed is accepted when any of them verifies its signature (two keys
/// during a rollover, the outgoing and the incoming one).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<PublicKey>,
}

impl Keyring {
    /// Reads every key file; the first unreadable one is the error.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Keyring, SignatureError> {
        let keys = paths
            .iter()
            .map(|p| PublicKey::from_file(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { keys })
    }

    pub fn from_keys(keys: Vec<PublicKey>) -> Keyring {
        Keyring { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The keys' fingerprints, for messages: `A` or `A or B`.
    pub fn fingerprints(&self) -> String {
        self.keys
            .iter()
            .map(PublicKey::fingerprint)
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// Checks `signature` over `feed` under each key in turn; returns the key that verified.
    /// A missing or unreadable signature is reported as such; a signature no key verifies is
    /// a [`SignatureError::Mismatch`] naming every key tried.
    pub fn verify(
        &self,
        feed: &[u8],
        signature: Option<&[u8]>,
        at: &str,
    ) -> Result<&PublicKey, SignatureError> {
        let mut last = SignatureError::Missing { at: at.to_string() };
        for key in &self.keys {
            match key.verify(feed, signature, at) {
                Ok(()) => return Ok(key),
                Err(SignatureError::Mismatch { .. }) => {
                    last = SignatureError::Mismatch {
                        at: at.to_string(),
                        key: self.fingerprints(),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// An Ed25519 signing key (the registry operator's side).
pub struct SecretKey {
    key: ed25519_dalek::SigningKey,
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, String> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| format!("the operating system's random source failed: {e}"))?;
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8) file.
    pub fn from_file(path: &Path) -> Result<SecretKey, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|err| SignatureError::ReadSecret {
            path: path.display().to_string(),
            err,
        })?;
        SecretKey::parse(&text).map_err(|why| SignatureError::BadSecret {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8 v1, Ed25519).
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let der = pem_body(text.trim(), "PRIVATE KEY")?;
        match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
            Some(seed) if seed.len() == 32 => {
                Ok(SecretKey::from_seed(seed.try_into().expect("length checked")))
            }
            _ => Err(format!(
                "{} bytes of DER that are not an Ed25519 PKCS#8 key (algorithm OID 1.3.101.112 expected)",
                der.len()
            )),
        }
    }

    /// The key as a PEM `PRIVATE KEY` (PKCS#8), as `openssl genpkey -algorithm ed25519`
    /// writes it.
    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        pem("PRIVATE KEY", &der)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The detached signature over `bytes`, in the signature file's format: base64 and a
    /// newline.
    pub fn sign_base64(&self, bytes: &[u8]) -> String {
        use ed25519_dalek::Signer as _;
        let sig = self.key.sign(bytes);
        let mut s = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        s.push('\n');
        s
    }
}

/// A PEM block with 64-column base64 lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a PEM block labelled `label`.
fn pem_body(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    if !text.starts_with(&begin) {
        return Err(format!(
            "the first line is \"{}\", not \"{begin}\"",
            text.lines().next().unwrap_or_default()
        ));
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("PEM body is not base64: {e}"))
}

/// Decodes hex (an even number of hex digits) or standard base64 (padding optional).
pub fn decode_base64_or_hex(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.split_whitespace().collect();
    if !compact.is_empty()
        && compact.len().is_multiple_of(2)
        && compact.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok((0..compact.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&compact[i..i + 2], 16).expect("hex digits checked"))
            .collect());
    }
    BASE64_ANY_PADDING
        .decode(&compact)
        .map_err(|e| format!("neither hex nor base64 ({e})"))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn public() -> PublicKey {
        PublicKey::from_bytes(signing_key().verifying_key().as_bytes()).unwrap()
    }

    fn b64(bytes: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes()
    }

    #[test]
    fn a_base64_signature_over_the_exact_bytes_verifies() {
        let feed = b"{\"serial\": 1}";
        let sig = signing_key().sign(feed).to_bytes();
        public().verify(feed, Some(&b64(&sig)), "t.sig").unwrap();
    }

    #[test]
    fn a_hex_signature_with_a_trailing_newline_verifies() {
        let feed = b"feed bytes";
        let sig = signing_key().sign(feed).to_bytes();
        let mut hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        hex.push('\n');
        public()
            .verify(feed, Some(hex.as_bytes()), "t.sig")
            .unwrap();
    }

    #[test]
    fn one_changed_byte_fails_with_a_bad_signature_error() {
        let feed = b"{\"serial\": 1}".to_vec();
        let sig = b64(&signing_key().sign(&feed).to_bytes());
        let mut tampered = feed.clone();
        tampered[2] ^= 1;
        let err = public().verify(&tampered, Some(&sig), "t.sig").unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("BAD SIGNATURE"), "{err}");
    }

    #[test]
    fn a_missing_signature_is_refused_naming_where_it_was_expected() {
        let err = public()
            .verify(b"x", None, "/etc/feed.json.sig")
            .unwrap_err();
        assert!(err.to_string().contains("/etc/feed.json.sig"), "{err}");
        assert!(err.to_string().contains("not signed"), "{err}");
    }

    #[test]
    fn a_signature_of_the_wrong_length_is_an_encoding_error() {
        let err = public()
            .verify(b"x", Some(&b64(&[1u8; 63])), "s")
            .unwrap_err();
        assert!(err.to_string().contains("63 bytes"), "{err}");
    }

    #[test]
    fn pem_spki_raw_base64_and_hex_keys_parse_to_the_same_key() {
        let raw = *signing_key().verifying_key().as_bytes();
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&raw);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for text in [pem.as_str(), hex.as_str(), b64.as_str()] {
            assert_eq!(
                PublicKey::parse(text).unwrap().fingerprint(),
                public().fingerprint(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_generated_key_s_pem_files_read_back_and_its_signatures_verify() {
        let secret = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&secret.to_pem()).unwrap();
        let public = PublicKey::parse(&again.public().to_pem()).unwrap();
        assert_eq!(public.fingerprint(), secret.public().fingerprint());
        let sig = secret.sign_base64(b"feed");
        public.verify(b"feed", Some(sig.as_bytes()), "s").unwrap();
        assert_ne!(
            SecretKey::generate().unwrap().public().fingerprint(),
            public.fingerprint(),
            "two generated keys differ"
        );
    }

    #[test]
    fn a_private_key_that_is_not_an_ed25519_pkcs8_pem_is_refused_saying_why() {
        let err = SecretKey::parse("hello").err().unwrap();
        assert!(err.contains("not \"-----BEGIN PRIVATE KEY-----\""), "{err}");
        // A public key where the private one belongs.
        let err = SecretKey::parse(&public().to_pem()).err().unwrap();
        assert!(err.contains("BEGIN PUBLIC KEY"), "{err}");
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = SecretKey::parse(pem).err().unwrap();
        assert!(err.contains("not an Ed25519 PKCS#8 key"), "{err}");
    }

    #[test]
    fn a_keyring_accepts_a_feed_signed_by_any_of_its_keys_and_names_all_when_none_matches() {
        let a = SecretKey::from_seed(&[1u8; 32]);
        let b = SecretKey::from_seed(&[2u8; 32]);
        let c = SecretKey::from_seed(&[3u8; 32]);
        let ring = Keyring::from_keys(vec![a.public(), b.public()]);
        for (signer, name) in [(&a, "A"), (&b, "B")] {
            let sig = signer.sign_base64(b"feed");
            let by = ring.verify(b"feed", Some(sig.as_bytes()), "s").unwrap();
            assert_eq!(by.fingerprint(), signer.public().fingerprint(), "{name}");
        }
        let err = ring
            .verify(b"feed", Some(c.sign_base64(b"feed").as_bytes()), "s")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("BAD SIGNATURE"), "{msg}");
        assert!(
            msg.contains(&a.public().fingerprint()) && msg.contains(&b.public().fingerprint()),
            "{msg}"
        );
        let err = ring.verify(b"feed", None, "s").unwrap_err();
        assert!(matches!(err, SignatureError::Missing { .. }), "{err}");
    }

    #[test]
    fn a_non_ed25519_pem_key_is_refused() {
        // An EC P-256 SubjectPublicKeyInfo prefix (OID 1.2.840.10045.2.1).
        let der = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
        ];
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let err = PublicKey::parse(&pem).unwrap_err();
        assert!(err.contains("not Ed25519"), "{err}");
    }
}
