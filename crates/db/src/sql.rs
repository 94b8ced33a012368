//! One small SQL interface over both engines, so that every query and write is written once.
//!
//! SQL text uses PostgreSQL's `$1` placeholders; for SQLite they become `?1`. Integers are
//! always 64-bit (`BIGINT`), text is compared bytewise (`COLLATE "C"` on PostgreSQL), and blobs
//! are `BLOB`/`BYTEA`.

use crate::DbError;

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum P {
    I(i64),
    T(String),
    F(f64),
    B(Vec<u8>),
}

impl From<i64> for P {
    fn from(v: i64) -> P {
        P::I(v)
    }
}
impl From<&str> for P {
    fn from(v: &str) -> P {
        P::T(v.to_string())
    }
}
impl From<String> for P {
    fn from(v: String) -> P {
        P::T(v)
    }
}
impl From<f64> for P {
    fn from(v: f64) -> P {
        P::F(v)
    }
}

/// A result cell.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    I(i64),
    T(String),
    F(f64),
    B(Vec<u8>),
}

impl V {
    pub fn i(&self) -> i64 {
        match self {
            V::I(i) => *i,
            V::F(f) => *f as i64,
            _ => 0,
        }
    }
    pub fn t(self) -> String {
        match self {
            V::T(s) => s,
            V::I(i) => i.to_string(),
            _ => String::new(),
        }
    }
    pub fn b(self) -> Vec<u8> {
        match self {
            V::B(b) => b,
            _ => Vec::new(),
        }
    }
    pub fn f(&self) -> f64 {
        match self {
            V::F(f) => *f,
            V::I(i) => *i as f64,
            _ => 0.0,
        }
    }
}

pub type Row = Vec<V>;

/// What both engines provide.
pub trait Sql {
    fn execute(&mut self, sql: &str, params: &[P]) -> Result<u64, DbError>;
    fn query(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row>, DbError>;
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    fn is_postgres(&self) -> bool;

    fn query_one(&mut self, sql: &str, params: &[P]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

// ---------------------------------------------------------------- SQLite

pub struct Lite(pub rusqlite::Connection);

fn to_lite(sql: &str) -> String {
    // `$` never appears in our SQL outside placeholders (values are always bound)
    sql.replace('$', "?")
}

impl rusqlite::ToSql for P {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            P::I(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            P::T(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            P::F(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            P::B(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl Sql for Lite {
    fn execute(&mut self, sql: &str, params: &[P]) -> Result<u64, DbError> {
        let mut st = self.0.prepare_cached(&to_lite(sql))?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }
    fn query(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row>, DbError> {
        let mut st = self.0.prepare_cached(&to_lite(sql))?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                use rusqlite::types::ValueRef;
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => V::Null,
                    ValueRef::Integer(i) => V::I(i),
                    ValueRef::Real(f) => V::F(f),
                    ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => V::B(b.to_vec()),
                });
            }
            out.push(row);
        }
        Ok(out)
    }
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        if !sql.contains(';') {
            // BEGIN, COMMIT, SAVEPOINT … run on every request: keep them prepared
            self.0.prepare_cached(sql)?.raw_execute()?;
            return Ok(());
        }
        self.0.execute_batch(sql)?;
        Ok(())
    }
    fn is_postgres(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------- PostgreSQL

pub struct Pg {
    pub client: postgres::Client,
    stmts: std::collections::HashMap<String, postgres::Statement>,
}

impl Pg {
    pub fn new(client: postgres::Client) -> Self {
        Pg {
            client,
            stmts: Default::default(),
        }
    }
    fn stmt(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        if self.stmts.len() > 2000 {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

fn pg_params(params: &[P]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            P::I(i) => i as &(dyn postgres::types::ToSql + Sync),
            P::T(s) => s as _,
            P::F(f) => f as _,
            P::B(b) => b as _,
        })
        .collect()
}

impl Sql for Pg {
    fn execute(&mut self, sql: &str, params: &[P]) -> Result<u64, DbError> {
        let st = self.stmt(sql)?;
        Ok(self.client.execute(&st, &pg_params(params))?)
    }
    fn query(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row>, DbError> {
        use postgres::types::Type;
        let st = self.stmt(sql)?;
        let rows = self.client.query(&st, &pg_params(params))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let t = col.type_();
                let v = if *t == Type::INT8 {
                    r.get::<_, Option<i64>>(i).map(V::I)
                } else if *t == Type::INT4 {
                    r.get::<_, Option<i32>>(i).map(|x| V::I(x as i64))
                } else if *t == Type::INT2 {
                    r.get::<_, Option<i16>>(i).map(|x| V::I(x as i64))
                } else if *t == Type::FLOAT8 {
                    r.get::<_, Option<f64>>(i).map(V::F)
                } else if *t == Type::BYTEA {
                    r.get::<_, Option<Vec<u8>>>(i).map(V::B)
                } else if *t == Type::BOOL {
                    r.get::<_, Option<bool>>(i).map(|b| V::I(b as i64))
                } else {
                    r.get::<_, Option<String>>(i).map(V::T)
                };
                row.push(v.unwrap_or(V::Null));
            }
            out.push(row);
        }
        Ok(out)
    }
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.client.batch_execute(sql)?;
        Ok(())
    }
    fn is_postgres(&self) -> bool {
        true
    }
}
