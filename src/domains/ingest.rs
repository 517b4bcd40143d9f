//! Client-to-server streams: newline-delimited JSON read line by line as it
//! arrives, each request one transaction (all of it kept, or none).
//!
//! - Metrics (`POST /streams/metrics`): `{"name", "value", "timestamp"}`
//!   lines, written with binary `COPY` as they are parsed; the answer is
//!   the statistics of each name, computed by Postgres over the rows just
//!   written; one row in `tidewire.metric_batches` (tracked) per request.
//! - Uploads (`POST /streams/uploads`): `{"sequence", "data", "timestamp"}`
//!   lines from sequence 0, base64 chunks decoded, hashed and stored one by
//!   one, so memory holds one chunk whatever the upload's size. Progress is
//!   committed apart (every 100 chunks and at the end) for
//!   `uploadProgress`; the upload is `complete` only in the transaction of
//!   its chunks.
//!
//! The HTTP layer turns a body into [`Line`]s; a malformed line is a
//! [`Refusal`] naming it.

use std::pin::pin;

use async_graphql::{Context, Object, Result as GqlResult, SimpleObject, Subscription, ID};
use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object as Pooled, Pool};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use crate::{
    auth::{Role, Viewer},
    db::{Change, DbError, Op},
    error::{cursor_expired, database, ErrorCode},
};

/// One line of a request body, numbered from 1.
#[derive(Debug)]
pub struct Line {
    pub number: u64,
    pub bytes: Vec<u8>,
}

/// Why a stream request was refused; nothing of it was kept.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A line that is not what the endpoint reads (HTTP 400).
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    /// Over a configured limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// A query parameter that is not what the endpoint takes (HTTP 400).
    #[error("{0}")]
    BadParameter(String),
    /// The upload id the client chose is taken (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The body stopped arriving: the client went away or stalled.
    #[error("the request body could not be read: {0}")]
    Read(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(error: tokio_postgres::Error) -> Self {
        Refusal::Database(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for Refusal {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Refusal::Database(error.into())
    }
}

fn bad(line: u64, reason: impl Into<String>) -> Refusal {
    Refusal::BadLine {
        line,
        reason: reason.into(),
    }
}

fn blank(line: &Line) -> bool {
    line.bytes.iter().all(u8::is_ascii_whitespace)
}

/// A connection that held a failed request's transaction is closed, not
/// given back: whatever state the aborted COPY left goes with it.
fn discard(client: Pooled) {
    drop(Pooled::take(client));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    name: String,
    value: f64,
    timestamp: DateTime<Utc>,
}

/// Statistics of one metric name over one request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Statistics {
    pub name: String,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Percentiles with linear interpolation (`percentile_cont`).
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 200;
/// Most distinct names in one request: the answer holds a line per name.
pub const MAX_METRIC_NAMES: usize = 1000;
/// A request's transaction whose client stops sending for this long is
/// ended by Postgres: a stalled client cannot hold back vacuum.
const IDLE_IN_TRANSACTION: &str = "60s";

/// Writes every metric of `lines` for `user` in one transaction and
/// answers the statistics per name.
pub async fn ingest_metrics(
    pool: &Pool,
    user: &str,
    lines: &mut (impl Stream<Item = Result<Line, Refusal>> + Unpin),
) -> Result<Vec<Statistics>, Refusal> {
    let mut client = pool.get().await?;
    match write_metrics(&mut client, user, lines).await {
        Ok(statistics) => Ok(statistics),
        Err(refusal) => {
            discard(client);
            Err(refusal)
        }
    }
}

async fn write_metrics(
    client: &mut Pooled,
    user: &str,
    lines: &mut (impl Stream<Item = Result<Line, Refusal>> + Unpin),
) -> Result<Vec<Statistics>, Refusal> {
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
        ))
        .await?;
    let mut names = std::collections::HashSet::new();
    let batch: i64 = transaction
        .query_one(
            "SELECT nextval(pg_get_serial_sequence('tidewire.metric_batches', 'id'))",
            &[],
        )
        .await?
        .get(0);
    let sink = transaction
        .copy_in("COPY tidewire.metrics (batch_id, name, value, recorded_at) FROM STDIN BINARY")
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::TEXT, Type::FLOAT8, Type::TIMESTAMPTZ],
    ));
    let mut rows: i64 = 0;
    while let Some(line) = lines.next().await {
        let line = line?;
        if blank(&line) {
            continue;
        }
        let metric: MetricLine = serde_json::from_slice(&line.bytes).map_err(|error| {
            bad(
                line.number,
                format!("not a metric {{\"name\", \"value\", \"timestamp\"}}: {error}"),
            )
        })?;
        if metric.name.is_empty()
            || metric.name.len() > MAX_METRIC_NAME
            || metric.name.contains('\0')
        {
            return Err(bad(
                line.number,
                format!("a name is 1–{MAX_METRIC_NAME} bytes, without NUL"),
            ));
        }
        if !(1..=9999).contains(&chrono::Datelike::year(&metric.timestamp)) {
            return Err(bad(line.number, "a timestamp's year is 1–9999"));
        }
        if names.len() < MAX_METRIC_NAMES {
            names.insert(metric.name.clone());
        } else if !names.contains(&metric.name) {
            return Err(bad(
                line.number,
                format!("more than {MAX_METRIC_NAMES} distinct names in one request"),
            ));
        }
        if !metric.value.is_finite() {
            return Err(bad(line.number, "a value is a finite number"));
        }
        writer
            .as_mut()
            .write(&[&batch, &metric.name, &metric.value, &metric.timestamp])
            .await?;
        rows += 1;
    }
    writer.finish().await?;
    let statistics: Vec<Statistics> = transaction
        .query(
            "SELECT name, count(*), min(value), max(value), avg(value),
                    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY value)
               FROM tidewire.metrics WHERE batch_id = $1 GROUP BY name ORDER BY name",
            &[&batch],
        )
        .await?
        .iter()
        .map(|row| {
            let percentiles: Vec<f64> = row.get(5);
            Statistics {
                name: row.get(0),
                count: row.get(1),
                min: row.get(2),
                max: row.get(3),
                mean: row.get(4),
                p50: percentiles[0],
                p95: percentiles[1],
                p99: percentiles[2],
            }
        })
        .collect();
    if rows > 0 {
        transaction
            .execute(
                "INSERT INTO tidewire.metric_batches (id, user_id, rows, names) VALUES ($1, $2, $3, $4)",
                &[&batch, &user, &rows, &(statistics.len() as i32)],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(statistics)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkLine {
    sequence: i64,
    data: String,
    #[allow(dead_code)]
    timestamp: DateTime<Utc>,
}

/// What a finished upload answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadResult {
    pub upload_id: String,
    pub bytes_received: i64,
    pub chunks_received: i64,
    /// Of the decoded bytes, in hex.
    pub sha256: String,
}

/// Progress is committed every this many chunks (and at the end).
pub const PROGRESS_EVERY: i64 = 100;

/// Stores the chunks of `lines` as one upload of `user`: complete with its
/// chunks in one transaction, or failed with none of them.
/// `chosen`: the upload's id, if the client picked one (a UUID) to follow
/// its progress from the start.
pub async fn upload(
    pool: &Pool,
    user: &str,
    chosen: Option<&str>,
    max_chunk_bytes: usize,
    lines: &mut (impl Stream<Item = Result<Line, Refusal>> + Unpin),
) -> Result<UploadResult, (Option<String>, Refusal)> {
    // Ids are compared as Postgres prints them: lower-case.
    let chosen = chosen.map(str::to_ascii_lowercase);
    if chosen
        .as_deref()
        .is_some_and(|id| !crate::services::sessions::is_uuid(id))
    {
        return Err((
            None,
            Refusal::BadParameter(
                "`uploadId` is a UUID, e.g. 0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60".into(),
            ),
        ));
    }
    let progress = pool.get().await.map_err(|e| (None, e.into()))?;
    let id: String = progress
        .query_opt(
            "INSERT INTO tidewire.uploads (id, owner_id)
             VALUES (coalesce($2::text::uuid, gen_random_uuid()), $1)
             ON CONFLICT (id) DO NOTHING RETURNING id::text",
            &[&user, &chosen],
        )
        .await
        .map_err(|e| (None, e.into()))?
        .ok_or_else(|| {
            (
                None,
                Refusal::Conflict("an upload with this id exists".into()),
            )
        })?
        .get(0);
    let mut client = pool
        .get()
        .await
        .map_err(|error| (Some(id.clone()), error.into()))?;
    let result = store_chunks(&mut client, &progress, &id, user, max_chunk_bytes, lines).await;
    match result {
        Ok(result) => {
            let _ = report(
                &progress,
                &id,
                user,
                result.chunks_received,
                result.bytes_received,
                "complete",
            )
            .await;
            Ok(result)
        }
        Err(refusal) => {
            discard(client);
            let reason = refusal.to_string();
            let _ = progress
                .execute(
                    "UPDATE tidewire.uploads SET status = 'failed', error = $2, finished_at = now()
                      WHERE id = $1::text::uuid AND status = 'receiving'",
                    &[&id, &reason],
                )
                .await;
            let _ = report(&progress, &id, user, 0, 0, "failed").await;
            Err((Some(id), refusal))
        }
    }
}

async fn report(
    client: &Pooled,
    id: &str,
    user: &str,
    chunks: i64,
    bytes: i64,
    status: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO tidewire.upload_progress (upload_id, owner_id, chunks, bytes, status)
             VALUES ($1::text::uuid, $2, $3, $4, $5)",
            &[&id, &user, &chunks, &bytes, &status],
        )
        .await
        .map(drop)
}

async fn store_chunks(
    client: &mut Pooled,
    progress: &Pooled,
    id: &str,
    user: &str,
    max_chunk_bytes: usize,
    lines: &mut (impl Stream<Item = Result<Line, Refusal>> + Unpin),
) -> Result<UploadResult, Refusal> {
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
        ))
        .await?;
    let insert = transaction
        .prepare("INSERT INTO tidewire.upload_chunks (upload_id, sequence, data) VALUES ($1::text::uuid, $2, $3)")
        .await?;
    let mut hash = Sha256::new();
    let (mut chunks, mut bytes): (i64, i64) = (0, 0);
    while let Some(line) = lines.next().await {
        let line = line?;
        if blank(&line) {
            continue;
        }
        let chunk: ChunkLine = serde_json::from_slice(&line.bytes).map_err(|error| {
            bad(
                line.number,
                format!("not a chunk {{\"sequence\", \"data\", \"timestamp\"}}: {error}"),
            )
        })?;
        if chunk.sequence != chunks {
            let what = if chunk.sequence < chunks {
                "a duplicate or out of order"
            } else {
                "out of order: a chunk is missing before it"
            };
            return Err(bad(
                line.number,
                format!("sequence {} is {what}; expected {chunks}", chunk.sequence),
            ));
        }
        if chunk.data.len() > max_chunk_bytes.div_ceil(3) * 4 + 4 {
            return Err(Refusal::TooLarge(format!(
                "line {}: a chunk is at most {max_chunk_bytes} bytes",
                line.number
            )));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(chunk.data.as_bytes())
            .map_err(|error| bad(line.number, format!("`data` is not base64: {error}")))?;
        if data.is_empty() {
            return Err(bad(line.number, "a chunk holds at least one byte"));
        }
        if data.len() > max_chunk_bytes {
            return Err(Refusal::TooLarge(format!(
                "line {}: a chunk is at most {max_chunk_bytes} bytes",
                line.number
            )));
        }
        hash.update(&data);
        transaction
            .execute(&insert, &[&id, &chunk.sequence, &data])
            .await?;
        chunks += 1;
        bytes += data.len() as i64;
        if chunks % PROGRESS_EVERY == 0 {
            // Committed apart: the owner sees it while the upload goes on.
            report(progress, id, user, chunks, bytes, "receiving").await?;
        }
    }
    let sha256: String = hash
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    transaction
        .execute(
            "UPDATE tidewire.uploads
                SET status = 'complete', bytes = $2, chunks = $3, sha256 = $4, finished_at = now()
              WHERE id = $1::text::uuid",
            &[&id, &bytes, &chunks, &sha256],
        )
        .await?;
    transaction.commit().await?;
    Ok(UploadResult {
        upload_id: id.to_owned(),
        bytes_received: bytes,
        chunks_received: chunks,
        sha256,
    })
}

/// An upload as its owner sees it.
#[derive(SimpleObject, Debug, Clone)]
pub struct Upload {
    pub id: ID,
    pub owner_id: ID,
    /// `receiving`, `complete` or `failed`.
    pub status: String,
    pub bytes: i64,
    pub chunks: i64,
    /// Of the whole upload, in hex; set once complete.
    pub sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One progress event of an upload.
#[derive(SimpleObject, Debug, Clone)]
pub struct UploadProgress {
    pub upload_id: ID,
    pub chunks: i64,
    pub bytes: i64,
    /// `receiving`, then `complete` or `failed` last.
    pub status: String,
    pub cursor: String,
}

fn is_not_found(error: &async_graphql::Error) -> bool {
    error
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get("code"))
        .is_some_and(|code| *code == async_graphql::Value::from(ErrorCode::NotFound.as_str()))
}

fn owner_only<'a>(ctx: &Context<'a>) -> GqlResult<&'a Viewer> {
    super::viewer(ctx, "see uploads")
}

/// The upload `id` if `viewer` may see it (its owner, or an admin);
/// `NOT_FOUND` when there is none (yet).
async fn readable_upload(pool: &Pool, viewer: &Viewer, id: &ID) -> GqlResult<Upload> {
    let not_found = || ErrorCode::NotFound.error("no such upload");
    if !crate::services::sessions::is_uuid(id) {
        return Err(not_found());
    }
    let client = pool.get().await.map_err(database)?;
    let row = client
        .query_opt(
            "SELECT id::text, owner_id, status, bytes, chunks, sha256, error, created_at, finished_at
               FROM tidewire.uploads WHERE id = $1::text::uuid",
            &[&id.as_str()],
        )
        .await
        .map_err(database)?
        .ok_or_else(not_found)?;
    let owner: String = row.get(1);
    if owner != viewer.user_id && viewer.role != Role::Admin {
        return Err(ErrorCode::Forbidden.error("only its owner may see an upload"));
    }
    Ok(Upload {
        id: ID(row.get(0)),
        owner_id: ID(owner),
        status: row.get(2),
        bytes: row.get(3),
        chunks: row.get(4),
        sha256: row.get(5),
        error: row.get(6),
        created_at: row.get(7),
        finished_at: row.get(8),
    })
}

#[derive(Default)]
pub struct UploadsQuery;

#[Object]
impl UploadsQuery {
    /// An upload's state (its owner or an admin).
    async fn upload(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Upload> {
        readable_upload(ctx.data_unchecked::<Pool>(), owner_only(ctx)?, &id).await
    }
}

#[derive(Default)]
pub struct UploadsSubscription;

#[Subscription]
impl UploadsSubscription {
    /// Progress of an upload (its owner or an admin): every 100 chunks,
    /// then `complete` or `failed` — from `after` if given, else from now.
    async fn upload_progress(
        &self,
        ctx: &Context<'_>,
        upload_id: ID,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = GqlResult<UploadProgress>>> {
        let viewer = owner_only(ctx)?;
        // An upload that does not exist yet may be followed (its id chosen
        // by the client); only progress of the viewer's own uploads passes.
        match readable_upload(ctx.data_unchecked::<Pool>(), viewer, &upload_id).await {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(error),
        }
        let owner = (viewer.role != Role::Admin).then(|| viewer.user_id.clone());
        let after = super::start_after(ctx, after)?;
        let feed = super::feed(ctx, super::hub(ctx).subscribe("uploads"), after);
        let wanted = upload_id.to_ascii_lowercase();
        let keep = move |change: &Change| {
            let text = |name: &str| {
                change
                    .row
                    .as_ref()
                    .and_then(|row| row.get(name))
                    .and_then(|value| value.as_str())
            };
            change.table == "tidewire.upload_progress"
                && change.op == Op::Insert
                && text("upload_id") == Some(wanted.as_str())
                && owner
                    .as_deref()
                    .is_none_or(|owner| text("owner_id") == Some(owner))
        };
        Ok(feed.into_stream(keep).map(|item| {
            let change = item.map_err(cursor_expired)?;
            let row = change.row.as_ref();
            let field = |name: &str| row.and_then(|row| row.get(name));
            Ok(UploadProgress {
                upload_id: ID(field("upload_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()),
                chunks: field("chunks").and_then(|v| v.as_i64()).unwrap_or(0),
                bytes: field("bytes").and_then(|v| v.as_i64()).unwrap_or(0),
                status: field("status")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                cursor: change.cursor.to_string(),
            })
        }))
    }
}
