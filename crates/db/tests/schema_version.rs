//! A store written by an iryo with another storage layout is refused with a clear message,
//! instead of being read with the wrong key order.

#[tokio::test]
async fn a_store_with_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().display().to_string();
    let store = iryo_db::Store::open(&loc).await.expect("fresh store");
    drop(store);
    // reopening the same version works
    drop(iryo_db::Store::open(&loc).await.expect("same version"));
    let c = rusqlite::Connection::open(dir.path().join("iryo.db")).unwrap();
    c.execute(
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(c);
    let err = match iryo_db::Store::open(&loc).await {
        Ok(_) => panic!("an old store must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("schema version 2"), "{err}");
    assert!(err.contains("iryo import"), "{err}");
}
