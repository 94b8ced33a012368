//! Hand-written rule constants that the masters do not carry: which code is the 処方料/処方箋料
//! variant, and the 検体検査 item-count bundling steps (告示 D006/D007/D008/D009/D012/D013/D014/D419).
//! Every point value still comes from the master; only code choices and step tables live here.

use super::model::TimeCategory;

/// 初診料 (A000).
pub const SHOSHIN: &str = "111000110";
/// 再診料 (A001).
pub const SAISHIN: &str = "112007410";
/// 外来診療料 (A002), hospitals with ≥ 200 beds.
pub const GAIRAI_SHINRYO: &str = "112011310";
/// 外来管理加算.
pub const GAIRAI_KANRI: &str = "112011010";

/// 処方料: 向精神薬多剤 / 7種類以上内服薬 / その他.
pub const SHOHO_PSY: &str = "120003610";
pub const SHOHO_7: &str = "120002610";
pub const SHOHO_OTHER: &str = "120001210";
/// 処方箋料 (リフィル以外): 向精神薬多剤 / 7種類以上 / その他; and the リフィル variants.
pub const SHOHOSEN_PSY: &str = "120003710";
pub const SHOHOSEN_7: &str = "120002710";
pub const SHOHOSEN_OTHER: &str = "120002910";
pub const SHOHOSEN_REFILL_PSY: &str = "120004710";
pub const SHOHOSEN_REFILL_7: &str = "120004810";
pub const SHOHOSEN_REFILL_OTHER: &str = "120005010";
/// 調剤料 内服・屯服 / 外用 (入院外).
pub const CHOZAI_NAIFUKU: &str = "120000710";
pub const CHOZAI_GAIYO: &str = "120001010";
/// 麻薬等加算 (調剤料) / (処方料).
pub const MAYAKU_CHOZAI: &str = "120000110";
pub const MAYAKU_SHOHO: &str = "120001310";
/// 調剤技術基本料 (その他).
pub const CHOKI: &str = "120001810";
/// 特定疾患処方管理加算 (処方料) / (処方箋料).
pub const TOKUTEI_SHOHO: &str = "120005610";
pub const TOKUTEI_SHOHOSEN: &str = "120005710";
/// 一般名処方加算 1 / 2.
pub const IPPANMEI_1: &str = "120004270";
pub const IPPANMEI_2: &str = "120003570";

/// 処置 (J通則5), 手術 (K通則12) and 内視鏡検査 (D 第3節 通則) 時間外・休日・深夜加算 of an
/// outpatient treated urgently outside the clinic's hours: (part of the 区分, time category,
/// 加算1 code (届出; 処置 only from [`TREATMENT_ADDITION1_MIN_POINTS`]; none for 検査), 加算2
/// code). The percentages come from the master. They apply to items whose 時間加算区分 (col 43)
/// is 1: the master sets it on 処置 of 150点 and more, on 手術, and among 検査 only on the
/// 内視鏡検査 (D295–D325).
pub const TREATMENT_TIME_ADDITIONS: [(char, TimeCategory, &str, &str); 12] = [
    ('D', TimeCategory::Overtime, "", "160204070"),
    ('D', TimeCategory::Holiday, "", "160203970"),
    ('D', TimeCategory::LateNight, "", "160204170"),
    ('D', TimeCategory::OvertimeSpecial, "", "160204270"),
    ('J', TimeCategory::Overtime, "140055390", "140000190"),
    ('J', TimeCategory::Holiday, "140055290", "140000290"),
    ('J', TimeCategory::LateNight, "140055490", "140000390"),
    ('J', TimeCategory::OvertimeSpecial, "140055590", "140000490"),
    ('K', TimeCategory::Overtime, "150371390", "150000490"),
    ('K', TimeCategory::Holiday, "150371290", "150000590"),
    ('K', TimeCategory::LateNight, "150371490", "150000690"),
    ('K', TimeCategory::OvertimeSpecial, "150371590", "150000790"),
];
/// 処置 of at least this many points take 加算1 (with the 届出); below, 加算2.
pub const TREATMENT_ADDITION1_MIN_POINTS: i64 = 1000;

/// 注射 (第6部 通則): 麻薬注射加算 (a 麻薬 among the drugs, 医薬品 col 14 = 1) and 生物学的製剤注射加算
/// (医薬品 col 16 = 1, with G000 皮内・皮下・筋肉内, G001 静脈内 or G002 動脈注射).
pub const NARCOTIC_INJECTION: &str = "130000310";
pub const BIOLOGICAL_INJECTION: &str = "130000110";
/// Sections whose 手技 take 生物学的製剤注射加算.
pub const BIOLOGICAL_INJECTION_SECTIONS: [&str; 3] = ["G000", "G001", "G002"];

/// Number of 内服薬 kinds from which the "7種類以上" variants apply.
pub const SEVEN_KINDS: usize = 7;
/// Days of an 内服 剤 from which 特定疾患処方管理加算 applies (R6: 28日以上).
pub const LONG_PRESCRIPTION_DAYS: u32 = 28;
/// 傷病名マスター col 21 value for 特定疾患療養管理料・特定疾患処方管理加算 対象.
pub const SPECIFIC_DISEASE: u8 = 5;

/// 検体検査 item-count bundling (包括対象検査, 医科診療行為マスター col 16): for a group, the
/// minimum item counts and the points that replace the items' own points ("所定点数にかかわらず").
/// R6 (2024-06-01) values; dates before [`BUNDLES_VALID_FROM`] get them with a warning.
pub struct BundleStep {
    pub group: u8,
    pub name: &'static str,
    /// (minimum count, points), ascending.
    pub steps: &'static [(usize, i64)],
}

pub const BUNDLES: &[BundleStep] = &[
    BundleStep {
        group: 1,
        name: "生化学的検査（１）",
        steps: &[(5, 93), (8, 99), (10, 103)],
    },
    BundleStep {
        group: 2,
        name: "生化学的検査（２）内分泌学的検査",
        steps: &[(3, 410), (6, 623), (8, 900)],
    },
    BundleStep {
        group: 3,
        name: "肝炎ウイルス関連検査",
        steps: &[(3, 290), (4, 360), (5, 425)],
    },
    BundleStep {
        group: 5,
        name: "腫瘍マーカー",
        steps: &[(2, 230), (3, 290), (4, 385)],
    },
    BundleStep {
        group: 6,
        name: "出血・凝固検査",
        steps: &[(3, 530), (5, 722)],
    },
    BundleStep {
        group: 7,
        name: "自己抗体検査",
        steps: &[(2, 320), (3, 490)],
    },
    BundleStep {
        group: 8,
        name: "内分泌負荷試験",
        steps: &[(3, 3600)],
    },
    BundleStep {
        group: 9,
        name: "ウイルス抗体価（定性・半定量・定量）",
        steps: &[(8, 632)],
    },
    BundleStep {
        group: 10,
        name: "グロブリンクラス別ウイルス抗体価",
        steps: &[(2, 400)],
    },
    BundleStep {
        group: 11,
        name: "特異的ＩｇＥ半定量・定量",
        steps: &[(13, 1430)],
    },
];

/// First day the [`BUNDLES`] step values apply (令和6年度改定).
pub const BUNDLES_VALID_FROM: (i32, u32, u32) = (2024, 6, 1);

/// Points of a bundle for `count` items, if the count reaches the first step.
pub fn bundle_points(group: u8, count: usize) -> Option<(&'static BundleStep, usize, i64)> {
    let b = BUNDLES.iter().find(|b| b.group == group)?;
    b.steps
        .iter()
        .rev()
        .find(|(min, _)| count >= *min)
        .map(|(min, p)| (b, *min, *p))
}

/// 診療識別 of a 診療行為 from its 点数欄集計先識別（入院外） (master col 15).
pub fn shikibetsu_of_tally(tally: u16) -> u8 {
    match tally {
        110 => 11,
        120..=125 => 12,
        130 => 13,
        140 => 14,
        210 => 21,
        220 => 22,
        230 => 23,
        240 => 24,
        250 => 25,
        260 => 26,
        270 => 27,
        280 => 28,
        300 => 33,
        311 => 31,
        321 => 32,
        331 => 33,
        400 => 40,
        500 | 502 => 50,
        540 => 54,
        600 => 60,
        700 => 70,
        _ => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_steps() {
        assert_eq!(bundle_points(1, 4).map(|b| b.2), None);
        assert_eq!(bundle_points(1, 5).map(|b| b.2), Some(93));
        assert_eq!(bundle_points(1, 9).map(|b| b.2), Some(99));
        assert_eq!(bundle_points(1, 12).map(|b| b.2), Some(103));
        assert_eq!(bundle_points(5, 2).map(|b| b.2), Some(230));
        assert!(bundle_points(4, 9).is_none());
        assert_eq!(shikibetsu_of_tally(123), 12);
        assert_eq!(shikibetsu_of_tally(800), 80);
    }
}
