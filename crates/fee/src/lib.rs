//! 共通算定モジュール: 医科 outpatient fee calculation from the official 支払基金 masters, copay and UKE receipts.
