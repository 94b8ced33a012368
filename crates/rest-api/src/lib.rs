//! The FHIR R4 RESTful API of iryo, as an axum [`Router`].
//!
//! Every tenant (institution) has its own base URL: `/t/{tenant}/fhir`; `/fhir` is the default
//! tenant. Requests are parsed here (paths, headers, `Prefer`, `_format`…), turned into store
//! calls ([`iryo_db::Store`]) and answered as FHIR JSON, errors always as an OperationOutcome.
//!
//! ```no_run
//! # async fn demo() {
//! let store = iryo_db::Store::open("./iryo-data").await.unwrap();
//! let app = iryo_rest_api::router(iryo_rest_api::AppState::new(store, Default::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

pub mod auth;
pub mod bundle;
pub mod capability;
pub mod error;
pub mod export;
pub mod format;
pub mod handlers;
pub mod operation;
pub mod validate;
pub mod web;

use axum::Router;
use std::sync::Arc;

pub use error::{FhirError, Issue};

/// The media type of every response body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Server settings that affect the API.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body: usize,
    /// When set (and `security` is not), every request must carry
    /// `Authorization: Bearer <token>`. With `security` it is the static system token.
    pub api_token: Option<String>,
    /// Authentication, access policy and audit ([`auth`]); `None` = open API (tests and
    /// local development only).
    pub security: Option<Arc<auth::Security>>,
    /// Public base URL (scheme://host[:port]) used in links instead of the Host header.
    pub public_base: Option<String>,
    /// FHIR operations implemented outside this crate ([`operation::Operation`]).
    pub operations: Operations,
}

/// The registered [`operation::Operation`]s.
#[derive(Clone, Default)]
pub struct Operations(pub Vec<Arc<dyn operation::Operation>>);

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|o| o.name()))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body: 32 * 1024 * 1024,
            api_token: None,
            public_base: None,
            security: None,
            operations: Operations::default(),
        }
    }
}

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    pub store: iryo_db::Store,
    pub config: Arc<Config>,
}

impl AppState {
    pub fn new(store: iryo_db::Store, config: Config) -> Self {
        AppState {
            store,
            config: Arc::new(config),
        }
    }
}

/// The API router: `/fhir/…`, `/t/{tenant}/fhir/…`, `/health`, and the web login pages
/// (`/login`, `/account`, `/t/{tenant}/login`, … — [`web`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .merge(web::routes())
        .fallback(handlers::handle)
        .with_state(state)
}
