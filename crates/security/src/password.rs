//! Passwords: argon2id hashing, the 令和7年度 checklist rule, common-password
//! refusal, reuse refusal, lockout delays and login rate limiting.
//!
//! The common-password list is the 10,000 most frequent entries of the list
//! Django ships (`django/contrib/auth/common-passwords.txt.gz`, BSD-3-Clause,
//! created by Royce Williams from breach corpora), stored zstd-compressed in
//! `data/common-passwords-10k.txt.zst`.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use crate::error::{ErrorKind, Result, SecurityError};

/// OWASP Password Storage Cheat Sheet minimum for argon2id: m = 19 MiB,
/// t = 2, p = 1.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;

/// Longest password accepted (bounds hashing cost of hostile input).
pub const MAX_PASSWORD_CHARS: usize = 256;

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with argon2id and a random salt into a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(too_long());
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(SecurityError::crypto)
}

/// Verifies a password against a PHC hash. Malformed hashes and overlong
/// passwords simply do not verify.
pub fn verify_password(phc: &str, password: &str) -> bool {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Whether a stored hash uses weaker parameters than the current ones and
/// should be replaced at the next successful login.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    parsed.algorithm.as_str() != "argon2id"
        || params.m_cost() < ARGON2_MEMORY_KIB
        || params.t_cost() < ARGON2_ITERATIONS
}

fn too_long() -> SecurityError {
    SecurityError::new(
        ErrorKind::WeakPassword,
        format!("パスワードは{MAX_PASSWORD_CHARS}文字以内にしてください"),
        format!("password longer than {MAX_PASSWORD_CHARS} characters"),
    )
}

static COMMON: OnceLock<HashSet<String>> = OnceLock::new();

/// The embedded list of common passwords (lowercase).
pub fn common_passwords() -> &'static HashSet<String> {
    COMMON.get_or_init(|| {
        let data = include_bytes!("../data/common-passwords-10k.txt.zst");
        // The list is part of the binary and checked by tests; should it ever
        // fail to decode, an empty set only weakens, never breaks, logins.
        let text = zstd::decode_all(&data[..]).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Whether the password is a common one, or a common word merely wrapped in
/// digits and symbols (`Password123!`).
pub fn is_common_password(password: &str) -> bool {
    let list = common_passwords();
    let lower = password.to_lowercase();
    if list.contains(&lower) {
        return true;
    }
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let stripped = lower.chars().count() - core.chars().count();
    core.chars().count() >= 4 && stripped <= 6 && list.contains(core)
}

/// Password policy. The default is the checklist profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Length from which any composition is accepted and no periodic change
    /// is needed (checklist: 13 characters).
    pub long_min_chars: usize,
    /// Minimum length of a password mixing letters, digits and symbols
    /// (checklist: 8 characters).
    pub mixed_min_chars: usize,
    /// Number of previous passwords that may not be reused.
    pub history: usize,
    /// Maximum age of a short mixed password when 2FA is off.
    pub max_age_without_2fa: Duration,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            long_min_chars: 13,
            mixed_min_chars: 8,
            history: 5,
            max_age_without_2fa: Duration::days(90),
        }
    }
}

/// Accepted password's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// True when the password relies on the 8-character mixed rule, so it
    /// must be changed periodically unless 2FA is on.
    pub rotation_required_without_2fa: bool,
}

fn weak(ja: impl Into<String>, en: impl Into<String>) -> SecurityError {
    SecurityError::new(ErrorKind::WeakPassword, ja, en)
}

impl PasswordPolicy {
    /// Checks a new password. `context_words` are the user name, display name
    /// and tenant: a password containing one of them (≥ 3 chars) is refused.
    pub fn check(&self, password: &str, context_words: &[&str]) -> Result<PolicyOutcome> {
        let n = password.chars().count();
        if n > MAX_PASSWORD_CHARS {
            return Err(too_long());
        }
        if password.chars().any(char::is_control) {
            return Err(weak(
                "パスワードに制御文字は使えません",
                "password contains control characters",
            ));
        }
        if password.trim() != password {
            return Err(weak(
                "パスワードの先頭と末尾に空白は使えません",
                "password starts or ends with white space",
            ));
        }
        let letters = password.chars().any(char::is_alphabetic);
        let digits = password.chars().any(|c| c.is_ascii_digit());
        let symbols = password
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace());
        let outcome = if n >= self.long_min_chars {
            PolicyOutcome {
                rotation_required_without_2fa: false,
            }
        } else if n >= self.mixed_min_chars && letters && digits && symbols {
            PolicyOutcome {
                rotation_required_without_2fa: true,
            }
        } else {
            return Err(weak(
                format!(
                    "パスワードは{}文字以上、または英字・数字・記号を混在させた{}文字以上にしてください",
                    self.long_min_chars, self.mixed_min_chars
                ),
                format!(
                    "password must have at least {} characters, or at least {} mixing letters, digits and symbols",
                    self.long_min_chars, self.mixed_min_chars
                ),
            ));
        };
        let distinct: HashSet<char> = password.chars().collect();
        if distinct.len() < 4 {
            return Err(weak(
                "同じ文字の繰り返しが多すぎます",
                "password uses too few distinct characters",
            ));
        }
        if is_common_password(password) {
            return Err(weak(
                "よく使われるパスワード、または漏えいしたことのあるパスワードは使えません",
                "password is common or known from breaches",
            ));
        }
        let lower = password.to_lowercase();
        for w in context_words {
            let w = w.trim().to_lowercase();
            if w.chars().count() >= 3 && lower.contains(&w) {
                return Err(weak(
                    "パスワードに利用者名や施設名を含めないでください",
                    "password contains the user or tenant name",
                ));
            }
        }
        Ok(outcome)
    }

    /// Refuses a password equal to one of the last `history` hashes.
    pub fn check_reuse<'a>(
        &self,
        password: &str,
        previous_hashes: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        if previous_hashes
            .into_iter()
            .take(self.history)
            .any(|h| verify_password(h, password))
        {
            return Err(weak(
                format!("直近{}回に使ったパスワードは再利用できません", self.history),
                format!("password was used within the last {} changes", self.history),
            ));
        }
        Ok(())
    }

    /// Whether a password must be changed now: short mixed passwords expire
    /// after [`Self::max_age_without_2fa`] when 2FA is off.
    pub fn change_due(
        &self,
        rotation_required_without_2fa: bool,
        totp_enabled: bool,
        changed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        rotation_required_without_2fa
            && !totp_enabled
            && now - changed_at >= self.max_age_without_2fa
    }
}

/// Generates a random password that satisfies the policy (used for the
/// first administrator's one-time password): 20 characters from an
/// unambiguous alphabet, with letters, digits and symbols.
pub fn generate_password() -> String {
    use rand::seq::SliceRandom;
    use rand::Rng;
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"-_.!#%+=";
    let mut rng = rand::rngs::OsRng;
    let all: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL].concat();
    let mut out: Vec<u8> = vec![
        *LOWER.choose(&mut rng).unwrap_or(&b'a'),
        *UPPER.choose(&mut rng).unwrap_or(&b'A'),
        *DIGIT.choose(&mut rng).unwrap_or(&b'2'),
        *SYMBOL.choose(&mut rng).unwrap_or(&b'-'),
    ];
    while out.len() < 20 {
        out.push(all[rng.gen_range(0..all.len())]);
    }
    out.shuffle(&mut rng);
    String::from_utf8_lossy(&out).into_owned()
}

/// Lockout after repeated failures, with a delay that doubles per failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures allowed before the first lock.
    pub threshold: u32,
    /// Lock length at the threshold.
    pub base_delay: Duration,
    /// Upper bound of the lock length.
    pub max_delay: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            threshold: 5,
            base_delay: Duration::seconds(30),
            max_delay: Duration::hours(1),
        }
    }
}

impl LockoutPolicy {
    /// Lock length after `failures` consecutive failures (zero below the
    /// threshold, then base × 2^(failures − threshold), capped).
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures < self.threshold {
            return Duration::zero();
        }
        let exp = (failures - self.threshold).min(20);
        self.base_delay
            .checked_mul(1i32 << exp)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// Sliding-window rate limiter keyed by string (account or source address).
/// In-process; the per-account failure counter in the store covers
/// multi-instance deployments.
#[derive(Debug)]
pub struct RateLimiter {
    max: usize,
    window: Duration,
    hits: Mutex<HashMap<String, Vec<DateTime<Utc>>>>,
}

/// Keys kept before stale entries are pruned.
const RATE_LIMIT_PRUNE_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        RateLimiter {
            max,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt. `Err` (kind Throttled) with the wait time when
    /// the key is over its limit; refused attempts are not counted.
    pub fn check(&self, key: &str, now: DateTime<Utc>) -> Result<()> {
        let mut map = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= RATE_LIMIT_PRUNE_AT {
            let window = self.window;
            map.retain(|_, v| v.last().is_some_and(|t| now - *t < window));
        }
        let v = map.entry(key.to_string()).or_default();
        v.retain(|t| now - *t < self.window);
        if v.len() >= self.max {
            let wait = v
                .first()
                .map(|t| *t + self.window - now)
                .unwrap_or(self.window);
            return Err(throttled(wait));
        }
        v.push(now);
        Ok(())
    }
}

pub(crate) fn throttled(wait: Duration) -> SecurityError {
    let secs = wait.num_seconds().max(1);
    SecurityError::new(
        ErrorKind::Throttled,
        format!("試行回数が多すぎます。{secs}秒後に再度お試しください"),
        format!("too many attempts; retry in {secs} s"),
    )
}

/// Login throttling per account and per source address.
#[derive(Debug)]
pub struct LoginThrottle {
    pub per_account: RateLimiter,
    pub per_source: RateLimiter,
}

impl Default for LoginThrottle {
    /// 10 attempts per account and 30 per source address per 5 minutes.
    fn default() -> Self {
        LoginThrottle {
            per_account: RateLimiter::new(10, Duration::minutes(5)),
            per_source: RateLimiter::new(30, Duration::minutes(5)),
        }
    }
}

impl LoginThrottle {
    pub fn check(
        &self,
        tenant: &str,
        username: &str,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.per_source.check(source, now)?;
        self.per_account
            .check(&format!("{tenant}\u{1f}{}", username.to_lowercase()), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(&h, "correct horse battery staple"));
        assert!(!verify_password(&h, "correct horse battery stapl"));
        assert!(!verify_password("not a hash", "x"));
        assert!(!verify_password("", ""));
        assert!(!needs_rehash(&h));
        let weak_params = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(needs_rehash(&weak_params));
        assert!(verify_password(&weak_params, "pw"));
        // Salted: same password, different hashes.
        assert_ne!(h, hash_password("correct horse battery staple").unwrap());
        assert!(hash_password(&"x".repeat(300)).is_err());
    }

    #[test]
    fn common_list_is_embedded() {
        let l = common_passwords();
        assert!(l.len() > 9_000, "{}", l.len());
        assert!(is_common_password("123456"));
        assert!(is_common_password("Password"));
        assert!(is_common_password("Password123!"));
        assert!(is_common_password("iloveyou"));
        assert!(!is_common_password("k7#Vq9!zLm2$"));
    }

    #[test]
    fn checklist_rule() {
        let p = PasswordPolicy::default();
        // 13+ characters: no periodic change needed.
        let o = p.check("tsukimi dango yama", &[]).unwrap();
        assert!(!o.rotation_required_without_2fa);
        // 8+ mixed: accepted with periodic change.
        let o = p.check("Ka7#mPq2", &[]).unwrap();
        assert!(o.rotation_required_without_2fa);
        // 8 letters+digits only: refused; 12 chars without symbols refused.
        for bad in ["Ka7mPq2x", "abcdefgh", "Ka7#mPq", "kamoshika123"] {
            let e = p.check(bad, &[]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::WeakPassword, "{bad}");
            assert!(e.message_ja.contains("文字"));
        }
        // Common, repetitive, context words, control characters.
        assert!(p.check("password123456", &[]).is_err());
        assert!(p.check("aaaaaaaaaaaaaaaa", &[]).is_err());
        assert!(p
            .check("yamada-taro-2026!", &["yamada", "clinic-a"])
            .is_err());
        assert!(p.check("abc\u{7}defghijklmn", &[]).is_err());
        assert!(p.check(" leading space pass", &[]).is_err());
        assert!(p.check(&"Zq9!".repeat(70), &[]).is_err());
        // Japanese passphrases count characters, not bytes.
        assert!(p.check("やまのぼりとうみのさんぽたのしい", &[]).is_ok());
    }

    #[test]
    fn reuse_and_rotation() {
        let p = PasswordPolicy {
            history: 2,
            ..Default::default()
        };
        let h1 = hash_password("first-pass-word-1").unwrap();
        let h2 = hash_password("second-pass-word-2").unwrap();
        let h3 = hash_password("third-pass-word-3").unwrap();
        let hist = [h3.as_str(), h2.as_str(), h1.as_str()];
        assert!(p.check_reuse("third-pass-word-3", hist).is_err());
        assert!(p.check_reuse("second-pass-word-2", hist).is_err());
        // Older than the history length: allowed.
        assert!(p.check_reuse("first-pass-word-1", hist).is_ok());
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert!(!p.change_due(true, false, t0, t0 + Duration::days(89)));
        assert!(p.change_due(true, false, t0, t0 + Duration::days(90)));
        assert!(!p.change_due(true, true, t0, t0 + Duration::days(400)));
        assert!(!p.change_due(false, false, t0, t0 + Duration::days(400)));
    }

    #[test]
    fn generated_passwords_pass_policy() {
        let p = PasswordPolicy::default();
        for _ in 0..20 {
            let pw = generate_password();
            assert_eq!(pw.len(), 20);
            p.check(&pw, &["admin"]).unwrap();
        }
    }

    #[test]
    fn lockout_grows() {
        let l = LockoutPolicy::default();
        assert_eq!(l.delay_after(4), Duration::zero());
        assert_eq!(l.delay_after(5), Duration::seconds(30));
        assert_eq!(l.delay_after(6), Duration::seconds(60));
        assert_eq!(l.delay_after(8), Duration::seconds(240));
        assert_eq!(l.delay_after(100), Duration::hours(1));
        assert_eq!(l.delay_after(u32::MAX), Duration::hours(1));
        // An extreme configuration does not overflow.
        let huge = LockoutPolicy {
            threshold: 0,
            base_delay: Duration::days(1_000_000_000),
            max_delay: Duration::days(1),
        };
        assert_eq!(huge.delay_after(30), Duration::days(1));
    }

    #[test]
    fn rate_limit_per_account_and_source() {
        let t = LoginThrottle {
            per_account: RateLimiter::new(3, Duration::minutes(1)),
            per_source: RateLimiter::new(5, Duration::minutes(1)),
        };
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        for _ in 0..3 {
            t.check("a", "alice", "10.0.0.1", t0).unwrap();
        }
        let e = t.check("a", "ALICE", "10.0.0.2", t0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        // Same name in another tenant is a different account.
        t.check("b", "alice", "10.0.0.3", t0).unwrap();
        // Source limit: spraying many accounts from one address.
        for u in ["u1", "u2", "u3", "u4"] {
            let _ = t.check("a", u, "10.9.9.9", t0);
        }
        t.check("a", "u5", "10.9.9.9", t0).unwrap();
        assert!(t.check("a", "u6", "10.9.9.9", t0).is_err());
        // Window passes.
        t.check("a", "alice", "10.0.0.1", t0 + Duration::seconds(61))
            .unwrap();
    }
}
