//! Two store handles on one SQLite file, as `iryo serve` and a host command (`iryo import`,
//! `iryo clins bind`) are: their writes interleave without key collisions, because each write
//! transaction continues the key counters stored in the database.

use iryo_db::{Store, WriteOp};
use serde_json::json;

#[tokio::test]
async fn interleaved_writers_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().display().to_string();
    let a = Store::open(&loc).await.unwrap();
    let b = Store::open(&loc).await.unwrap();
    let put =
        |id: &str| WriteOp::put(json!({"resourceType": "Patient", "id": id, "gender": "female"}));
    for round in 0..3 {
        // alternate writers; each would reuse the other's keys with counters of its own
        a.write(1, vec![put(&format!("a{round}"))])
            .await
            .expect("write through a");
        b.write(
            1,
            vec![put(&format!("b{round}")), put(&format!("c{round}"))],
        )
        .await
        .expect("write through b");
        // updates through the other handle keep one current version each
        a.write(1, vec![put(&format!("b{round}"))])
            .await
            .expect("update through a");
    }
    for store in [&a, &b] {
        for round in 0..3 {
            for (p, version) in [("a", 1), ("b", 2), ("c", 1)] {
                let id = format!("{p}{round}");
                let r = store
                    .read(1, "Patient", &id)
                    .await
                    .unwrap()
                    .expect("stored");
                assert_eq!(r.version, version, "{id}");
            }
        }
        let q = iryo_search::query::parse_query(
            iryo_search::model(),
            Some("Patient"),
            "gender=female&_count=100",
            iryo_search::query::Handling::Strict,
        )
        .unwrap();
        let page = store
            .search(
                1,
                iryo_db::SearchRequest {
                    query: q,
                    page_token: None,
                    base_url: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, Some(9));
    }
}
