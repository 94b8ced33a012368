//! # iryo-clins — 電子カルテ情報共有サービス (JP-CLINS platform)
//!
//! The platform side of the national 3文書6情報 sharing service, as a library with its own
//! axum router under `/clins/fhir`: institutions `$register` JP_Bundle_CLINS 5情報 Bundles and
//! document Bundles (診療情報提供書, 退院時サマリー, 健診結果報告書), `$withdraw` or `$change`
//! them; patients give consent at an institution; institutions, patients and insurers get their
//! views; a retention job removes what is past its time. Every rule cites jp-clins.md (see
//! docs/CLINS.md). Data lives as FHIR Bundles in one platform tenant of an [`iryo_db::Store`];
//! every view, search and refusal goes to the `iryo-security` access log.
//!
//! ```no_run
//! # async fn demo(store: iryo_db::Store, tokens: iryo_security::token::TokenService,
//! #   audit: std::sync::Arc<dyn iryo_security::store::SecurityStore>) -> Result<(), String> {
//! use iryo_clins::{router, Binding, ClinsConfig, ClinsState};
//! let state = ClinsState::new(store, tokens, audit, ClinsConfig::default()).await?;
//! // tokens issued for tenant "clins-platform" with sub "hospital-a" act as institution 1318814790
//! state.bind_client("hospital-a", Binding::Institution("1318814790".into())).await?;
//! let app: axum::Router = router(state);
//! # let _ = app; Ok(()) }
//! ```

pub mod checks;
mod http;
pub mod ids;
mod service;
pub mod views;

pub use checks::{Issue, Kind};
pub use http::router;
pub use service::{Actor, Binding, Bindings, ClinsConfig, ClinsState, Refusal, RetentionReport};
