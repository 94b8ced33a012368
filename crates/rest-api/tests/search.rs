//! Search over real HTTP on both stores: every parameter type, prefixes, modifiers, chains,
//! reverse chains, includes, sorting, paging, compartments, strict/lenient handling.

use iryo_testkit::{match_ids, TestServer};
use serde_json::{json, Value};

async fn put(srv: &TestServer, v: Value) {
    let path = format!(
        "/fhir/{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    let (st, _, body) = srv.put(&path, &v).await;
    assert!(st == 201 || st == 200, "{}: {path}: {body}", srv.engine);
}

async fn ids(srv: &TestServer, q: &str) -> Vec<String> {
    let (st, _, b) = srv.get(&format!("/fhir/{q}")).await;
    assert_eq!(st, 200, "{}: {q}: {b}", srv.engine);
    match_ids(&b)
}

fn s(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    v.sort();
    v
}

async fn seed(srv: &TestServer) {
    put(
        srv,
        json!({"resourceType": "Organization", "id": "org1", "name": "山田クリニック"}),
    )
    .await;
    put(srv, json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "医師", "given": ["一郎"]}]})).await;
    put(srv, json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "male", "birthDate": "1980-05-01",
        "name": [{"family": "ヤマダ", "given": ["タロウ"]}, {"family": "山田", "given": ["太郎"]}],
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11310000001", "value": "00001",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "telecom": [{"system": "phone", "value": "03-1234-5678"}],
        "address": [{"city": "千代田区", "postalCode": "100-0001"}],
        "managingOrganization": {"reference": "Organization/org1"},
        "generalPractitioner": [{"reference": "Practitioner/dr1"}],
        "meta": {"tag": [{"system": "urn:tag", "code": "vip"}], "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]}})).await;
    put(srv, json!({"resourceType": "Patient", "id": "p2", "active": false, "gender": "female", "birthDate": "1992-11",
        "name": [{"family": "Müller", "given": ["Anna"]}], "deceasedBoolean": false})).await;
    put(
        srv,
        json!({"resourceType": "Patient", "id": "p3", "gender": "female", "birthDate": "2001-01-15",
        "name": [{"family": "Yamamoto"}]}),
    )
    .await;
    let obs = |id: &str, pat: &str, code: &str, v: f64, unit: &str, when: &str| {
        json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": format!("test {code}")}], "text": "血圧"},
            "subject": {"reference": format!("Patient/{pat}")},
            "performer": [{"reference": "Practitioner/dr1"}],
            "effectiveDateTime": when,
            "valueQuantity": {"value": v, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        })
    };
    put(
        srv,
        obs(
            "o1",
            "p1",
            "8480-6",
            120.0,
            "mm[Hg]",
            "2024-03-01T09:00:00+09:00",
        ),
    )
    .await;
    put(
        srv,
        obs(
            "o2",
            "p1",
            "8480-6",
            145.0,
            "mm[Hg]",
            "2024-06-01T09:00:00+09:00",
        ),
    )
    .await;
    put(srv, obs("o3", "p2", "29463-7", 55.5, "kg", "2023-12-31")).await;
    put(
        srv,
        obs("o4", "p3", "8480-6", 100.0, "mm[Hg]", "2025-01-01"),
    )
    .await;
    put(srv, json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-03-01", "end": "2024-03-03"}})).await;
}

#[tokio::test]
async fn parameter_types_and_prefixes() {
    for srv in TestServer::all().await {
        seed(&srv).await;
        // string: starts-with, case- and accent-insensitive, :exact, :contains, width-folded kana
        assert_eq!(ids(&srv, "Patient?family=yama").await, s(&["p3"]));
        assert_eq!(ids(&srv, "Patient?name=muller").await, s(&["p2"]));
        assert_eq!(ids(&srv, "Patient?family:exact=Müller").await, s(&["p2"]));
        assert_eq!(ids(&srv, "Patient?family:exact=müller").await, s(&[]));
        assert_eq!(ids(&srv, "Patient?name:contains=amot").await, s(&["p3"]));
        assert_eq!(ids(&srv, "Patient?family=ﾔﾏﾀﾞ").await, s(&["p1"]));
        assert_eq!(ids(&srv, "Patient?family=山田").await, s(&["p1"]));
        assert_eq!(ids(&srv, "Patient?address-city=千代田").await, s(&["p1"]));
        // token
        assert_eq!(ids(&srv, "Patient?gender=female").await, s(&["p2", "p3"]));
        assert_eq!(ids(&srv, "Patient?gender:not=female").await, s(&["p1"]));
        assert_eq!(ids(&srv, "Patient?active=true").await, s(&["p1"]));
        assert_eq!(
            ids(
                &srv,
                "Patient?identifier=urn:oid:1.2.392.100495.20.3.51.11310000001|00001"
            )
            .await,
            s(&["p1"])
        );
        assert_eq!(ids(&srv, "Patient?identifier=00001").await, s(&["p1"]));
        assert_eq!(
            ids(&srv, "Patient?identifier=urn:other|00001").await,
            s(&[])
        );
        assert_eq!(
            ids(
                &srv,
                "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|00001"
            )
            .await,
            s(&["p1"])
        );
        assert_eq!(ids(&srv, "Patient?phone=03-1234-5678").await, s(&["p1"]));
        assert_eq!(
            ids(&srv, "Observation?code=http://loinc.org|8480-6").await,
            s(&["o1", "o2", "o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?code=8480-6,29463-7").await,
            s(&["o1", "o2", "o3", "o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?code:text=血圧").await,
            s(&["o1", "o2", "o3", "o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?code:text=test 294").await,
            s(&["o3"])
        );
        assert_eq!(ids(&srv, "Patient?_tag=urn:tag|vip").await, s(&["p1"]));
        assert_eq!(
            ids(
                &srv,
                "Patient?_profile=http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"
            )
            .await,
            s(&["p1"])
        );
        assert_eq!(ids(&srv, "Patient?_id=p1,p3").await, s(&["p1", "p3"]));
        // date, with precision
        assert_eq!(ids(&srv, "Patient?birthdate=1980").await, s(&["p1"]));
        assert_eq!(ids(&srv, "Patient?birthdate=1980-05-01").await, s(&["p1"]));
        assert_eq!(
            ids(&srv, "Patient?birthdate=1992-11-10").await,
            s(&[]),
            "a month-precision birthDate is not within one day"
        );
        assert_eq!(ids(&srv, "Patient?birthdate=1992").await, s(&["p2"]));
        assert_eq!(
            ids(&srv, "Patient?birthdate=ge1992-01-01").await,
            s(&["p2", "p3"])
        );
        assert_eq!(
            ids(&srv, "Patient?birthdate=lt1992-01-01").await,
            s(&["p1"])
        );
        assert_eq!(
            ids(&srv, "Patient?birthdate=gt2000&birthdate=lt2002").await,
            s(&["p3"])
        );
        assert_eq!(
            ids(&srv, "Patient?birthdate=ne1980").await,
            s(&["p2", "p3"])
        );
        assert_eq!(
            ids(&srv, "Patient?birthdate=sa1990").await,
            s(&["p2", "p3"])
        );
        assert_eq!(ids(&srv, "Patient?birthdate=eb1990").await, s(&["p1"]));
        assert_eq!(
            ids(&srv, "Observation?date=2024-03-01").await,
            s(&["o1"]),
            "09:00+09:00 is 2024-03-01T00:00Z"
        );
        assert_eq!(ids(&srv, "Observation?date=2024-02-29").await, s(&[]));
        assert_eq!(ids(&srv, "Observation?date=2024").await, s(&["o1", "o2"]));
        assert_eq!(
            ids(&srv, "Observation?date=ge2024-05-01").await,
            s(&["o2", "o4"])
        );
        assert_eq!(
            ids(&srv, "Encounter?date=2024-03").await,
            s(&["e1"]),
            "the period lies within March"
        );
        assert_eq!(
            ids(&srv, "Encounter?date=2024-03-02").await,
            s(&[]),
            "eq: the search range must contain the whole period"
        );
        assert_eq!(ids(&srv, "Encounter?date=ge2024-03-02").await, s(&["e1"]));
        assert_eq!(ids(&srv, "Encounter?date=lt2024-03-02").await, s(&["e1"]));
        assert_eq!(ids(&srv, "Encounter?date=gt2024-03-03").await, s(&[]));
        // quantity and number
        assert_eq!(
            ids(&srv, "Observation?value-quantity=120").await,
            s(&["o1"])
        );
        assert_eq!(
            ids(&srv, "Observation?value-quantity=gt130").await,
            s(&["o2"])
        );
        assert_eq!(
            ids(
                &srv,
                "Observation?value-quantity=le100|http://unitsofmeasure.org|mm[Hg]"
            )
            .await,
            s(&["o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?value-quantity=55.5||kg").await,
            s(&["o3"])
        );
        assert_eq!(
            ids(&srv, "Observation?value-quantity=55.5||mg").await,
            s(&[])
        );
        assert_eq!(
            ids(&srv, "Observation?value-quantity=ap110").await,
            s(&["o1", "o4"])
        );
        // reference: Type/id, id alone, :Type, absolute URL of our base, :missing
        assert_eq!(
            ids(&srv, "Observation?subject=Patient/p1").await,
            s(&["o1", "o2"])
        );
        assert_eq!(ids(&srv, "Observation?patient=p1").await, s(&["o1", "o2"]));
        assert_eq!(
            ids(&srv, "Observation?subject:Patient=p2").await,
            s(&["o3"])
        );
        let abs = format!("Observation?subject={}/fhir/Patient/p3", srv.base);
        assert_eq!(ids(&srv, &abs).await, s(&["o4"]));
        assert_eq!(
            ids(&srv, "Patient?organization:missing=true").await,
            s(&["p2", "p3"])
        );
        assert_eq!(
            ids(&srv, "Patient?organization:missing=false").await,
            s(&["p1"])
        );
        // AND of parameters: Observation by patient + code + date
        assert_eq!(
            ids(&srv, "Observation?patient=p1&code=8480-6&date=ge2024-04").await,
            s(&["o2"])
        );
    }
}

#[tokio::test]
async fn chains_has_includes_sort_paging() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        seed(&srv).await;
        // forward chain, one and two levels
        assert_eq!(
            ids(&srv, "Observation?subject:Patient.family=yama").await,
            s(&["o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?patient.gender=female").await,
            s(&["o3", "o4"])
        );
        assert_eq!(
            ids(&srv, "Observation?subject:Patient.organization.name=山田").await,
            s(&["o1", "o2"])
        );
        // a chain next to a selective clause is checked per candidate (another plan than a
        // chain alone): the result must be the intersection of the two alone
        for (chain, other) in [
            ("patient.gender=female", "code=29463-7"),
            ("patient.gender=female", "code=8480-6"),
            ("subject:Patient.organization.name=山田", "code=8480-6"),
            ("subject:Patient.organization.name=山田", "status=final"),
            ("subject:Patient.family=yama", "status=final"),
        ] {
            let a = ids(&srv, &format!("Observation?{chain}")).await;
            let b = ids(&srv, &format!("Observation?{other}")).await;
            let both: Vec<String> = a.iter().filter(|x| b.contains(x)).cloned().collect();
            assert_eq!(
                ids(&srv, &format!("Observation?{other}&{chain}")).await,
                both,
                "{e}: {other}&{chain}"
            );
        }
        // reverse chain
        assert_eq!(
            ids(&srv, "Patient?_has:Observation:patient:code=29463-7").await,
            s(&["p2"])
        );
        assert_eq!(
            ids(
                &srv,
                "Patient?_has:Observation:subject:value-quantity=gt110"
            )
            .await,
            s(&["p1"])
        );
        // _include / _revinclude
        let (_, _, b) = srv.get("/fhir/Observation?code=8480-6&_include=Observation:subject&_include=Observation:performer").await;
        let inc: Vec<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["search"]["mode"] == "include")
            .map(|x| {
                format!(
                    "{}/{}",
                    x["resource"]["resourceType"].as_str().unwrap(),
                    x["resource"]["id"].as_str().unwrap()
                )
            })
            .collect();
        let mut inc = inc;
        inc.sort();
        assert_eq!(
            inc,
            vec!["Patient/p1", "Patient/p3", "Practitioner/dr1"],
            "{e}"
        );
        let (_, _, b) = srv.get("/fhir/Patient?_id=p1&_revinclude=Observation:subject&_revinclude=Encounter:subject").await;
        let n_inc = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["search"]["mode"] == "include")
            .count();
        assert_eq!(n_inc, 3, "{e}: {b}");
        // :iterate: Observation -> Patient -> Organization
        let (_, _, b) = srv.get("/fhir/Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:organization").await;
        assert!(b.to_string().contains("\"id\":\"org1\""), "{e}: {b}");
        // sort
        let (_, _, b) = srv.get("/fhir/Patient?_sort=birthdate").await;
        let order: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["resource"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(order, vec!["p1", "p2", "p3"]);
        let (_, _, b) = srv.get("/fhir/Patient?_sort=-birthdate").await;
        let order: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["resource"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(order, vec!["p3", "p2", "p1"]);
        let (_, _, b) = srv
            .get("/fhir/Observation?_sort=patient,-value-quantity")
            .await;
        let order: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["resource"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(order, vec!["o2", "o1", "o3", "o4"]);
        // paging: stable while others write
        let (_, _, p1) = srv
            .get("/fhir/Observation?_count=2&_sort=_id&_total=accurate")
            .await;
        assert_eq!(p1["total"], 4);
        let next = p1["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
        // a write between pages: a new Observation sorting first
        put(&srv, json!({"resourceType": "Observation", "id": "a0", "status": "final", "code": {"text": "x"}})).await;
        let path = next.strip_prefix(&srv.base).unwrap();
        let (st, _, p2) = srv.get(path).await;
        assert_eq!(st, 200, "{e}: {p2}");
        let got: Vec<&str> = p2["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["resource"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec!["o3", "o4"], "{e}");
        assert!(p2["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "previous"));
        // _total=none, _count=0
        let (_, _, b) = srv.get("/fhir/Observation?_total=none").await;
        assert!(b.get("total").is_none());
        // POST _search
        let (st, _, b) = srv
            .request(
                "POST",
                "/fhir/Patient/_search",
                &[("content-type", "application/x-www-form-urlencoded")],
                b"gender=female".to_vec(),
            )
            .await;
        assert_eq!(st, 200);
        assert_eq!(match_ids(&b), s(&["p2", "p3"]));
        // compartment
        assert_eq!(ids(&srv, "Patient/p1/Observation").await, s(&["o1", "o2"]));
        assert_eq!(
            ids(&srv, "Patient/p1/Observation?date=2024-06").await,
            s(&["o2"])
        );
        assert_eq!(ids(&srv, "Patient/p1/Encounter").await, s(&["e1"]));
    }
}

#[tokio::test]
async fn unknown_parameters_strict_and_lenient() {
    for srv in TestServer::all().await {
        seed(&srv).await;
        let (st, _, b) = srv.get("/fhir/Patient?foo=bar&gender=male").await;
        assert_eq!(st, 200);
        assert_eq!(match_ids(&b), s(&["p1"]));
        let outcome = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["search"]["mode"] == "outcome")
            .expect("outcome entry");
        assert!(outcome["resource"].to_string().contains("foo"));
        let (st, _, oo) = srv
            .get_with("/fhir/Patient?foo=bar", &[("prefer", "handling=strict")])
            .await;
        assert_eq!(st, 400);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo.to_string().contains("foo"));
        // bad values are always errors
        let (st, _, _) = srv.get("/fhir/Observation?value-quantity=abc").await;
        assert_eq!(st, 400);
        let (st, _, _) = srv.get("/fhir/Patient?_count=-1").await;
        assert_eq!(st, 400);
        let (st, _, _) = srv.get("/fhir/Patient?gender:exact=male").await;
        assert_eq!(st, 200, "an unsupported modifier is ignored leniently");
        let (st, _, _) = srv
            .get_with(
                "/fhir/Patient?gender:exact=male",
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, 400);
        // injection attempts are plain values
        assert!(ids(&srv, "Patient?family=x' OR '1'='1").await.is_empty());
        assert!(ids(&srv, "Patient?family=%25").await.is_empty());
        assert!(ids(&srv, "Patient?name:contains=%25").await.is_empty());
    }
}

#[tokio::test]
async fn jp_core_search_parameters() {
    for srv in TestServer::all().await {
        put(&srv, json!({"resourceType": "Patient", "id": "kana", "name": [
            {"use": "usual", "text": "ヤマダ タロウ", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}]},
            {"use": "official", "text": "山田 太郎"}]})).await;
        put(&srv, json!({"resourceType": "Patient", "id": "other", "name": [{"use": "usual", "text": "スズキ"}]})).await;
        assert_eq!(
            ids(&srv, "Patient?jp-kana-sort=ヤマダ").await,
            s(&["kana"]),
            "{}",
            srv.engine
        );
        let (st, _, cs) = srv.get("/fhir/metadata").await;
        assert_eq!(st, 200);
        assert!(cs.to_string().contains("jp-kana-sort"));
    }
}

/// Page links carry their state (`_page`: the newest key when the first page was made and the
/// total then), so a second server sharing the database serves the next pages, and resources
/// created in between do not shift or join the result.
#[tokio::test]
async fn paging_across_servers_sharing_the_database() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        for i in 1..=5 {
            let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "gender": "female"});
            assert_eq!(srv.put(&format!("/fhir/Patient/p{i}"), &p).await.0, 201);
        }
        let other = srv.another_server(Default::default()).await;
        let (st, _, b1) = srv.get("/fhir/Patient?gender=female&_count=2").await;
        assert_eq!(st, 200, "{e}: {b1}");
        assert_eq!(b1["total"], 5, "{e}");
        let next = |b: &Value| {
            b["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_string())
        };
        // written between pages (through the other server): not part of this result
        let p6 = json!({"resourceType": "Patient", "id": "p0", "gender": "female"});
        assert_eq!(other.put("/fhir/Patient/p0", &p6).await.0, 201);
        let n1 = next(&b1).expect("next link");
        let path = n1.strip_prefix(&srv.base).unwrap();
        let (st, _, b2) = other.get(path).await;
        assert_eq!(st, 200, "{e}: {b2}");
        assert_eq!(match_list(&b2), vec!["p3", "p4"], "{e}");
        assert_eq!(b2["total"], 5, "{e}");
        let n2 = next(&b2).expect("next link");
        let (st, _, b3) = srv.get(n2.strip_prefix(&other.base).unwrap()).await;
        assert_eq!(st, 200, "{e}: {b3}");
        assert_eq!(match_list(&b3), vec!["p5"], "{e}");
        assert!(next(&b3).is_none(), "{e}");
        // a new search sees the new resource
        let (_, _, b) = other.get("/fhir/Patient?gender=female&_count=2").await;
        assert_eq!(b["total"], 6, "{e}");
        // sorted by a parameter, paged: the count runs without the sort's parameters
        let (st, _, b) = other
            .get("/fhir/Patient?gender=female&_sort=-birthdate,_id&_count=2&_total=accurate")
            .await;
        assert_eq!(st, 200, "{e}: {b}");
        assert_eq!(b["total"], 6, "{e}");
        assert_eq!(match_list(&b), vec!["p0", "p1"], "{e}");
        // without `_total`, a count that would visit every match is left out (a full page of
        // a sorted search); a single-clause search keeps its cheap exact total
        let (_, _, b) = other
            .get("/fhir/Patient?gender=female&_sort=-birthdate,_id&_count=2")
            .await;
        assert!(b.get("total").is_none(), "{e}: {b}");
        assert_eq!(match_list(&b), vec!["p0", "p1"], "{e}");
        let (_, _, b) = other
            .get("/fhir/Patient?gender=female&_id=p1,p2,p3&_count=2")
            .await;
        assert!(b.get("total").is_none(), "{e}: {b}");
        let (_, _, b) = other
            .get("/fhir/Patient?gender=female&_id=p1,p2,p3&_count=5")
            .await;
        assert_eq!(
            b["total"], 3,
            "{e}: a result that fits on the page is counted"
        );
        // a malformed page token is a clear error, not a crash
        let (st, _, oo) = srv
            .get("/fhir/Patient?gender=female&_count=2&_offset=2&_page=zz")
            .await;
        assert_eq!(
            (st, oo["resourceType"].as_str()),
            (400, Some("OperationOutcome")),
            "{e}"
        );
    }
}

fn match_list(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| x["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// System-level search over several types (`_type=Patient,Observation`) with the parameters
/// common to all resources, paged, in one tenant only.
#[tokio::test]
async fn system_search_over_several_types() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("clinic-b").await;
        for (base, n) in [("/fhir", 3), ("/t/clinic-b/fhir", 1)] {
            for i in 0..n {
                let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "meta": {"tag": [{"system": "urn:t", "code": "x"}]}});
                assert_eq!(srv.put(&format!("{base}/Patient/p{i}"), &p).await.0, 201);
                let o = json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
                    "code": {"text": "x"}, "meta": {"tag": [{"system": "urn:t", "code": "x"}]}});
                assert_eq!(
                    srv.put(&format!("{base}/Observation/o{i}"), &o).await.0,
                    201
                );
                let c = json!({"resourceType": "Condition", "id": format!("c{i}"),
                    "subject": {"reference": format!("Patient/p{i}")}, "meta": {"tag": [{"system": "urn:t", "code": "x"}]}});
                assert_eq!(srv.put(&format!("{base}/Condition/c{i}"), &c).await.0, 201);
            }
        }
        let (st, _, b) = srv
            .get("/fhir?_type=Patient,Observation&_tag=urn:t|x&_count=4&_total=accurate")
            .await;
        assert_eq!(st, 200, "{e}: {b}");
        assert_eq!(
            b["total"], 6,
            "{e}: Patients and Observations of this tenant only"
        );
        let mut got = match_list(&b);
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .expect("next link")
            .to_string();
        assert!(next.contains("_type=Patient,Observation"), "{e}: {next}");
        let (st, _, b2) = srv.get(next.strip_prefix(&srv.base).unwrap()).await;
        assert_eq!(st, 200, "{e}: {b2}");
        got.extend(match_list(&b2));
        got.sort();
        assert_eq!(got, vec!["o0", "o1", "o2", "p0", "p1", "p2"], "{e}");
        // an unknown type is an error, not an empty result
        let (st, _, oo) = srv.get("/fhir?_type=Patient,NoSuchType").await;
        assert_eq!(
            (st, oo["resourceType"].as_str()),
            (400, Some("OperationOutcome")),
            "{e}"
        );
        // the other tenant sees its own two
        let (_, _, b) = srv
            .get("/t/clinic-b/fhir?_type=Patient,Observation&_tag=urn:t|x")
            .await;
        assert_eq!(b["total"], 2, "{e}");
    }
}
