//! Bulk export jobs and their output files, stored in the database so that any server sharing
//! a PostgreSQL store can answer the status polls and file downloads.

use crate::sql::{P, V};
use crate::{DbError, Store};

#[derive(Debug, Clone)]
pub struct ExportJob {
    pub id: String,
    pub created: i64,
    /// `running`, `done`, `failed`, `cancelled`
    pub status: String,
    pub request: String,
    /// The manifest (JSON text) when done, or the error.
    pub result: String,
}

impl Store {
    pub async fn export_job_put(&self, tenant: i64, job: ExportJob) -> Result<(), DbError> {
        self.write_with(move |c, _, _| {
            c.execute(
                "INSERT INTO export_job (tenant, id, created, status, request, result) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant, id) DO UPDATE SET status = excluded.status, result = excluded.result",
                &[P::I(tenant), P::T(job.id), P::I(job.created), P::T(job.status), P::T(job.request), P::T(job.result)],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn export_job_get(
        &self,
        tenant: i64,
        id: &str,
    ) -> Result<Option<ExportJob>, DbError> {
        let id = id.to_string();
        self.read_with(move |c, _| {
            let r = c.query_one(
                "SELECT id, created, status, request, result FROM export_job WHERE tenant = $1 AND id = $2",
                &[P::I(tenant), P::T(id)],
            )?;
            Ok(r.map(|r| {
                let mut it = r.into_iter();
                ExportJob {
                    id: it.next().map(V::t).unwrap_or_default(),
                    created: it.next().map(|v| v.i()).unwrap_or(0),
                    status: it.next().map(V::t).unwrap_or_default(),
                    request: it.next().map(V::t).unwrap_or_default(),
                    result: it.next().map(V::t).unwrap_or_default(),
                }
            }))
        })
        .await
    }

    /// Remove a job and its files.
    pub async fn export_job_delete(&self, tenant: i64, id: &str) -> Result<(), DbError> {
        let id = id.to_string();
        self.write_with(move |c, _, _| {
            c.execute(
                "DELETE FROM export_file WHERE tenant = $1 AND job = $2",
                &[P::I(tenant), P::T(id.clone())],
            )?;
            c.execute(
                "DELETE FROM export_job WHERE tenant = $1 AND id = $2",
                &[P::I(tenant), P::T(id)],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn export_file_put(
        &self,
        tenant: i64,
        job: &str,
        name: &str,
        body: Vec<u8>,
    ) -> Result<(), DbError> {
        let (job, name) = (job.to_string(), name.to_string());
        self.write_with(move |c, _, _| {
            c.execute(
                "INSERT INTO export_file (tenant, job, name, body) VALUES ($1, $2, $3, $4)",
                &[P::I(tenant), P::T(job), P::T(name), P::B(body)],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn export_file_get(
        &self,
        tenant: i64,
        job: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, DbError> {
        let (job, name) = (job.to_string(), name.to_string());
        self.read_with(move |c, _| {
            Ok(c.query_one(
                "SELECT body FROM export_file WHERE tenant = $1 AND job = $2 AND name = $3",
                &[P::I(tenant), P::T(job), P::T(name)],
            )?
            .and_then(|r| r.into_iter().next())
            .map(V::b))
        })
        .await
    }
}
