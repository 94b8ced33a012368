//! `iryo security report`: the 令和7年度 cybersecurity checklist items that
//! iryo can evidence by itself, as rows (item, Japanese text, はい/いいえ,
//! evidence). Items outside the software (TLS front end, inventory, BCP
//! documents) are for the caller to append as extra [`ReportRow`]s.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::accounts::SecurityConfig;
use crate::audit::{AuditAction, AuditOutcome};
use crate::error::Result;
use crate::store::{AccountStatus, SecurityStore};

/// Tenant under which installation-wide events (backup, restore test) are
/// logged.
pub const SYSTEM_TENANT: &str = "_system";

/// A backup older than this is reported as missing.
pub const BACKUP_MAX_AGE: Duration = Duration::days(7);
/// A restore test older than this is reported as missing.
pub const RESTORE_TEST_MAX_AGE: Duration = Duration::days(365);

/// One checklist row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Stable item id (`R7-…` for checklist items, `GL6-…` for guideline
    /// requirements).
    pub id: String,
    /// The checklist item, in Japanese.
    pub item_ja: String,
    pub ok: bool,
    /// Evidence, in Japanese.
    pub evidence_ja: String,
}

impl ReportRow {
    /// `はい` or `いいえ`.
    pub fn answer_ja(&self) -> &'static str {
        if self.ok {
            "はい"
        } else {
            "いいえ"
        }
    }
}

fn row(id: &str, item: &str, ok: bool, evidence: String) -> ReportRow {
    ReportRow {
        id: id.into(),
        item_ja: item.into(),
        ok,
        evidence_ja: evidence,
    }
}

fn jst(t: DateTime<Utc>) -> String {
    (t + Duration::hours(9))
        .format("%Y-%m-%d %H:%M JST")
        .to_string()
}

/// Builds the report for `tenant` at `now`.
pub fn security_report<S: SecurityStore + ?Sized>(
    store: &S,
    config: &SecurityConfig,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ReportRow>> {
    let users = store.list_users(tenant)?;
    let active: Vec<_> = users
        .iter()
        .filter(|u| u.status == AccountStatus::Active && u.expires_at.is_none_or(|e| e > now))
        .collect();
    let staff: Vec<_> = active.iter().filter(|u| u.role.is_staff()).collect();
    let staff_2fa = staff.iter().filter(|u| u.totp_enabled).count();
    let mut rows = Vec::new();

    rows.push(row(
        "R7-2FA",
        "二要素認証を導入している(すべての職員アカウントで有効)",
        staff_2fa == staff.len() && config.require_totp_for_staff,
        format!(
            "有効な職員アカウント{}件中{}件で二要素認証(TOTP)が有効。職員への二要素認証の強制: {}",
            staff.len(),
            staff_2fa,
            if config.require_totp_for_staff {
                "有効"
            } else {
                "無効"
            }
        ),
    ));

    let p = &config.password;
    let due: Vec<&str> = active
        .iter()
        .filter(|u| {
            p.change_due(
                u.password_rotation,
                u.totp_enabled,
                u.password_changed_at,
                now,
            )
        })
        .map(|u| u.username.as_str())
        .collect();
    let policy_ok = p.long_min_chars >= 13 && p.mixed_min_chars >= 8;
    rows.push(row(
        "R7-⑦",
        "パスワードは英数字・記号混在の8文字以上とし定期的に変更している(二要素認証または13文字以上の場合は定期変更不要)",
        policy_ok && due.is_empty(),
        format!(
            "方針: {}文字以上、または英字・数字・記号混在の{}文字以上(後者で二要素認証なしの場合{}日ごとに変更)。変更期限切れ: {}件{}",
            p.long_min_chars,
            p.mixed_min_chars,
            p.max_age_without_2fa.num_days(),
            due.len(),
            if due.is_empty() { String::new() } else { format!("({})", due.join(", ")) }
        ),
    ));

    let initial: Vec<&str> = active
        .iter()
        .filter(|u| u.must_change_password && u.last_login_at.is_some())
        .map(|u| u.username.as_str())
        .collect();
    rows.push(row(
        "R7-⑧",
        "パスワードの使い回しを禁止している(初期パスワードのまま使用していない)",
        p.history >= 1 && initial.is_empty(),
        format!(
            "直近{}世代のパスワード再利用を拒否、よく使われる・漏えい済みパスワード約1万件を拒否、初期パスワードは初回ログイン時に変更必須。ログイン済みで初期パスワード未変更: {}件",
            p.history,
            initial.len()
        ),
    ));

    let mut by_role: Vec<(String, usize)> = Vec::new();
    for u in &active {
        let label = u.role.label_ja().to_string();
        match by_role.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => by_role.push((label, 1)),
        }
    }
    rows.push(row(
        "R7-ROLE",
        "利用者の職種・担当業務別に情報の閲覧・変更等の権限を設定している",
        active.is_empty() || !by_role.is_empty(),
        format!(
            "全アカウントに職種ロールを設定(職種別の権限表はREADME参照)。{}",
            by_role
                .iter()
                .map(|(l, n)| format!("{l} {n}名"))
                .collect::<Vec<_>>()
                .join("、")
        ),
    ));

    let admins: Vec<String> = active
        .iter()
        .filter(|u| u.is_admin)
        .map(|u| format!("{}({})", u.username, u.role.label_ja()))
        .collect();
    rows.push(row(
        "R7-ADMIN",
        "管理者権限を持つ利用者を明確にし、必要最小限にしている",
        !admins.is_empty(),
        format!(
            "管理者権限は明示的に付与。管理者{}名: {}",
            admins.len(),
            admins.join("、")
        ),
    ));

    let dormant: Vec<&str> = active
        .iter()
        .filter(|u| now - u.last_login_at.unwrap_or(u.created_at) >= config.dormant_after)
        .map(|u| u.username.as_str())
        .collect();
    let disabled = users.len() - active.len();
    rows.push(row(
        "R7-ACCOUNT",
        "退職者や使用していないアカウント等、不要なアカウントを削除または無効化している",
        dormant.is_empty(),
        format!(
            "{}日間未使用のアカウントは自動無効化。無効化・期限切れ済み: {}件、未使用で有効なまま: {}件{}",
            config.dormant_after.num_days(),
            disabled,
            dormant.len(),
            if dormant.is_empty() { String::new() } else { format!("({})", dormant.join(", ")) }
        ),
    ));

    let chain = store.verify_audit_chain(tenant)?;
    let head = store.audit_head(tenant)?;
    let (log_ok, log_evidence) = match (&chain, &head) {
        (Ok(n), Some(h)) => (
            true,
            format!(
                "アクセスログ{}件をハッシュチェーンで検証し改ざん・削除・挿入なし(最新 #{}、ハッシュ {}…)",
                n,
                h.entry.seq,
                h.hash.chars().take(16).collect::<String>()
            ),
        ),
        (Ok(_), None) => (false, "アクセスログがまだありません".to_string()),
        (Err(b), _) => (false, b.message_ja()),
    };
    rows.push(row(
        "R7-LOG",
        "アクセスログを管理している(改ざん・削除・追加を防止し定期的に確認)",
        log_ok,
        log_evidence,
    ));

    let latest = |action: AuditAction| -> Result<Option<DateTime<Utc>>> {
        let a = store.last_audit_of(tenant, action, AuditOutcome::Success)?;
        let b = store.last_audit_of(SYSTEM_TENANT, action, AuditOutcome::Success)?;
        Ok([a, b].into_iter().flatten().map(|r| r.entry.time).max())
    };
    let last_backup = latest(AuditAction::Backup)?;
    rows.push(row(
        "R7-BACKUP",
        "バックアップを取得し、暗号化して複数世代保管している",
        last_backup.is_some_and(|t| now - t <= BACKUP_MAX_AGE),
        match last_backup {
            Some(t) => format!(
                "最終バックアップ: {}(AES-256-GCM暗号化、マニフェスト・SHA-256付き、世代管理)",
                jst(t)
            ),
            None => "バックアップの記録がありません".into(),
        },
    ));
    let last_restore = latest(AuditAction::Restore)?;
    rows.push(row(
        "R7-RESTORE",
        "バックアップからの復旧手順を整備し、復元テストを実施している",
        last_restore.is_some_and(|t| now - t <= RESTORE_TEST_MAX_AGE),
        match last_restore {
            Some(t) => format!("最終復元テスト: {}(検証後に復元)", jst(t)),
            None => "復元テストの記録がありません".into(),
        },
    ));

    let pending = store.unreviewed_break_glass(tenant)?;
    rows.push(row(
        "GL6-BREAKGLASS",
        "非常時のアクセス(ブレークグラス)の利用を検知し、事後に確認している",
        pending.is_empty(),
        format!(
            "理由入力・時間制限付きで記録。未確認の緊急時アクセス: {}件",
            pending.len()
        ),
    ));
    Ok(rows)
}

/// Renders rows as a Markdown table (項目 | 内容 | 回答 | 根拠).
pub fn render_table(rows: &[ReportRow]) -> String {
    let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from("| 項目 | 内容 | 回答 | 根拠 |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            esc(&r.id),
            esc(&r.item_ja),
            r.answer_ja(),
            esc(&r.evidence_ja)
        ));
    }
    out
}
