//! Test kit: real iryo servers for integration tests, over real HTTP on a loopback port.
//!
//! [`TestServer::all`] gives one server on an embedded SQLite store in a temporary directory and,
//! when the environment variable `IRYO_TEST_POSTGRES` holds a PostgreSQL URL, one more on a fresh
//! PostgreSQL database created for the test (dropped afterwards). Without the variable the
//! PostgreSQL run is skipped with a message on stderr; CI always sets it.
//!
//! ```no_run
//! # async fn demo() {
//! for srv in iryo_testkit::TestServer::all().await {
//!     let (status, _, body) = srv.get("/fhir/metadata").await;
//!     assert_eq!(status, 200);
//!     assert_eq!(body["resourceType"], "CapabilityStatement");
//! }
//! # }
//! ```

use serde_json::Value;

/// The environment variable naming the PostgreSQL server for tests.
pub const PG_ENV: &str = "IRYO_TEST_POSTGRES";

/// A running server and an HTTP client for it.
pub struct TestServer {
    /// `http://127.0.0.1:port`
    pub base: String,
    pub client: reqwest::Client,
    pub store: iryo_db::Store,
    /// `sqlite` or `postgres`
    pub engine: &'static str,
    /// What `Store::open` was given (data directory or PostgreSQL URL).
    pub location: String,
    _dir: Option<tempfile::TempDir>,
    /// The test database (dropped with the server, after the task is stopped).
    _pg_db: Option<PgDb>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Resp = (u16, reqwest::header::HeaderMap, Value);

impl TestServer {
    async fn start(
        store: iryo_db::Store,
        config: iryo_rest_api::Config,
        engine: &'static str,
        location: String,
        dir: Option<tempfile::TempDir>,
        pg_db: Option<PgDb>,
    ) -> TestServer {
        let app = iryo_rest_api::router(iryo_rest_api::AppState::new(store.clone(), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            // with the peer address, as `iryo serve` runs it (logged as the source address)
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            engine,
            location,
            _dir: dir,
            _pg_db: pg_db,
            task,
        }
    }

    /// A server on a fresh embedded SQLite store.
    pub async fn sqlite() -> TestServer {
        Self::sqlite_with(Default::default()).await
    }

    pub async fn sqlite_with(config: iryo_rest_api::Config) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = dir.path().display().to_string();
        let store = iryo_db::Store::open(&location)
            .await
            .expect("open sqlite store");
        Self::start(store, config, "sqlite", location, Some(dir), None).await
    }

    /// A server on a fresh PostgreSQL database, or None (with a message) when not configured.
    pub async fn postgres() -> Option<TestServer> {
        Self::postgres_with(Default::default()).await
    }

    pub async fn postgres_with(config: iryo_rest_api::Config) -> Option<TestServer> {
        let db = PgDb::create("iryo_test").await?;
        let store = iryo_db::Store::open(&db.url)
            .await
            .expect("open postgres store");
        let url = db.url.clone();
        Some(Self::start(store, config, "postgres", url, None, Some(db)).await)
    }

    /// Another server on the same database, as a second `iryo serve` process would be (its
    /// own store handle, caches and connection pool). The first server keeps owning the data.
    pub async fn another_server(&self, config: iryo_rest_api::Config) -> TestServer {
        let store = iryo_db::Store::open(&self.location)
            .await
            .expect("open the same store again");
        Self::start(
            store,
            config,
            self.engine,
            self.location.clone(),
            None,
            None,
        )
        .await
    }

    /// SQLite, plus PostgreSQL when configured.
    pub async fn all() -> Vec<TestServer> {
        let mut v = vec![Self::sqlite().await];
        if let Some(pg) = Self::postgres().await {
            v.push(pg);
        }
        v
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, headers, body)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut rb = self.client.get(self.url(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.send(rb).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.client
                .put(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Any request with raw body and headers.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(m, self.url(path)).body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.send(rb).await
    }

    /// Create a tenant directly in the store.
    pub async fn tenant(&self, name: &str) {
        self.store.tenant_create(name).await.expect("create tenant");
    }
}

/// Replace the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// The ids of the resources in a searchset Bundle (matches only), sorted.
pub fn match_ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A fresh PostgreSQL database on the `IRYO_TEST_POSTGRES` server (for stores a test opens
/// itself, such as a security store), dropped when this is dropped.
pub struct PgDb {
    /// URL of the new database.
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    /// Creates `{prefix}_{random}`; None (with a SKIPPED message) when `IRYO_TEST_POSTGRES` is
    /// not set.
    pub async fn create(prefix: &str) -> Option<PgDb> {
        let Ok(admin) = std::env::var(PG_ENV) else {
            eprintln!("SKIPPED: PostgreSQL part of this test ({PG_ENV} is not set)");
            return None;
        };
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let (a, n) = (admin.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&a, postgres::NoTls).expect("connect admin");
            c.batch_execute(&format!("CREATE DATABASE {n}"))
                .expect("create db");
        })
        .await
        .expect("create db task");
        let url = with_database(&admin, &name);
        Some(PgDb { url, admin, name })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}
