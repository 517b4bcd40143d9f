//! Uploads a file to `POST /streams/uploads` as one chunked request:
//!
//! ```sh
//! cargo run --example upload -- FILE --token TOKEN [--server http://127.0.0.1:4000] [--chunk-bytes 262144]
//! ```
//!
//! The file is read a chunk at a time (never whole in memory), each chunk
//! sent as one line `{"sequence", "data" (base64), "timestamp"}` as soon as
//! it is read, and hashed on the way; a progress bar shows the file's bytes
//! handed to the connection. The server answers once it has stored the
//! last chunk; its SHA-256 must equal the local one.
//!
//! The request is atomic: a failed one keeps nothing (no chunk; the
//! upload's record says `failed` and why). The client names the upload
//! (a random UUID unless `--upload-id` is given), so it can follow it with
//! `uploadProgress` and, when the server's answer is lost (a server that
//! refuses a body mid-way may close the connection before the client reads
//! its answer), ask `upload(id)` what became of it.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use futures_util::stream;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::{fs::File, io::AsyncReadExt, sync::oneshot};

/// Upload a file to Tidewire's `POST /streams/uploads`.
#[derive(Parser)]
struct Args {
    /// The file to upload.
    file: PathBuf,
    /// A token of the uploading user (from `signUp` or `signIn`).
    #[arg(long, env = "TIDEWIRE_TOKEN", hide_env_values = true)]
    token: String,
    /// Where Tidewire listens.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    server: String,
    /// Bytes of the file per chunk (one line of the body); the server takes
    /// at most `--upload-max-chunk-bytes` (512 KiB by default).
    #[arg(
        long,
        default_value_t = 256 << 10,
        value_parser = clap::value_parser!(u64).range(1..=1 << 30)
    )]
    chunk_bytes: u64,
    /// The UUID to name the upload with (lower-case, with dashes); a
    /// random one if not given.
    #[arg(long)]
    upload_id: Option<String>,
}

/// The server's answer to a complete upload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Uploaded {
    upload_id: String,
    bytes_received: u64,
    chunks_received: u64,
    sha256: String,
}

/// What the local side knows once the whole file was read.
struct Local {
    bytes: u64,
    chunks: u64,
    sha256: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let file = File::open(&args.file)
        .await
        .map_err(|error| format!("cannot open {}: {error}", args.file.display()))?;
    let size = file
        .metadata()
        .await
        .map_err(|error| format!("cannot read {}: {error}", args.file.display()))?
        .len();
    let chunk_bytes = usize::try_from(args.chunk_bytes)
        .map_err(|_| format!("--chunk-bytes {} is too large", args.chunk_bytes))?;

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    let (done, local) = oneshot::channel();
    let body = reqwest::Body::wrap_stream(lines(file, chunk_bytes, bar.clone(), done));

    let server = args.server.trim_end_matches('/');
    let id = args.upload_id.clone().unwrap_or_else(|| random_uuid(&args));
    if !is_uuid(&id) {
        return Err(format!(
            "--upload-id {id:?} is not a UUID (lower-case, with dashes)"
        ));
    }
    eprintln!(
        "uploading {} ({size} bytes) as upload {id}; follow it with \
         `subscription {{ uploadProgress(uploadId: \"{id}\") {{ chunks bytes status }} }}`",
        args.file.display()
    );
    let url = format!("{server}/streams/uploads");
    let client = reqwest::Client::new();
    let response = client
        .post(&url)
        .query(&[("uploadId", &id)])
        .bearer_auth(&args.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await;
    bar.finish_and_clear();
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            let local = local.await.ok();
            let fate = fate(&client, server, &args.token, &id, local.as_ref()).await;
            return Err(format!(
                "the upload to {url} failed: {}\n{fate}",
                chain(&error)
            ));
        }
    };

    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| format!("reading the server's answer failed: {error}"))?;
    if !status.is_success() {
        return Err(refusal(status, &text));
    }
    let uploaded: Uploaded = serde_json::from_str(&text)
        .map_err(|error| format!("the server answered {status} with {text:?}: {error}"))?;
    let local: Local = local
        .await
        .map_err(|_| "the server answered before the whole file was sent".to_owned())?;

    println!("upload {}", uploaded.upload_id);
    println!(
        "  received {} bytes in {} chunks (sent {} bytes in {} chunks)",
        uploaded.bytes_received, uploaded.chunks_received, local.bytes, local.chunks
    );
    println!("  sha256 {} (server)", uploaded.sha256);
    println!("  sha256 {} (local)", local.sha256);
    if uploaded.sha256 != local.sha256 || uploaded.bytes_received != local.bytes {
        return Err(format!(
            "MISMATCH: the server kept upload {} as complete, but it is not this file",
            uploaded.upload_id
        ));
    }
    println!("OK: the server's SHA-256 equals the file's");
    Ok(())
}

/// The body: one line per chunk of `file`, read as the connection takes
/// them. Sends the local totals on `done` after the last one.
fn lines(
    file: File,
    chunk_bytes: usize,
    bar: ProgressBar,
    done: oneshot::Sender<Local>,
) -> impl futures_util::Stream<Item = std::io::Result<String>> {
    struct Reader {
        file: File,
        buffer: Vec<u8>,
        hash: Sha256,
        sequence: u64,
        bytes: u64,
        done: Option<oneshot::Sender<Local>>,
    }
    let reader = Reader {
        file,
        buffer: vec![0; chunk_bytes],
        hash: Sha256::new(),
        sequence: 0,
        bytes: 0,
        done: Some(done),
    };
    stream::unfold(reader, move |mut reader| {
        let bar = bar.clone();
        async move {
            // Fill a whole chunk unless the file ends first.
            let mut filled = 0;
            while filled < reader.buffer.len() {
                match reader.file.read(&mut reader.buffer[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) => return Some((Err(error), reader)),
                }
            }
            if filled == 0 {
                let done = reader.done.take()?;
                let sha256 = reader
                    .hash
                    .clone()
                    .finalize()
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                let _ = done.send(Local {
                    bytes: reader.bytes,
                    chunks: reader.sequence,
                    sha256,
                });
                return None;
            }
            let chunk = &reader.buffer[..filled];
            reader.hash.update(chunk);
            let line = format!(
                "{{\"sequence\":{},\"data\":\"{}\",\"timestamp\":\"{}\"}}\n",
                reader.sequence,
                base64::engine::general_purpose::STANDARD.encode(chunk),
                Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            );
            reader.sequence += 1;
            reader.bytes += filled as u64;
            bar.inc(filled as u64);
            Some((Ok(line), reader))
        }
    })
}

/// Explains a refusal: the server's reason, and what (nothing) was kept.
fn refusal(status: reqwest::StatusCode, text: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    // Stream refusals: {"error", "code", "line", "uploadId"}; sign-in and
    // rate refusals: {"errors": [{"message", "extensions": {"code"}}]}.
    let first = &body["errors"][0];
    let message = body["error"]
        .as_str()
        .or(first["message"].as_str())
        .unwrap_or(text);
    let message = message.trim_end_matches("; nothing was kept");
    let code = body["code"]
        .as_str()
        .or(first["extensions"]["code"].as_str())
        .unwrap_or("-");
    let mut out = format!("the server refused the upload: {status} {code}: {message}");
    if let Some(line) = body["line"].as_u64().filter(|line| *line > 0) {
        out.push_str(&format!(" (line {line} of the body: chunk {})", line - 1));
    }
    out.push_str("\nNothing was kept: a failed request keeps nothing");
    match body["uploadId"].as_str() {
        Some(id) => out.push_str(&format!(
            " (the server had named it upload {id}; its record says `failed`, with no chunks)."
        )),
        None => out.push_str(" (no upload was recorded)."),
    }
    out
}

/// What became of upload `id` when its request failed without an answer:
/// asked of the server with the `upload(id)` query.
async fn fate(
    client: &reqwest::Client,
    server: &str,
    token: &str,
    id: &str,
    local: Option<&Local>,
) -> String {
    const QUERY: &str = "query($id: ID!) { upload(id: $id) { status bytes chunks sha256 error } }";
    let mut last = String::new();
    // A request the server has not seen end yet is `receiving` a moment.
    for _ in 0..20 {
        let answer = client
            .post(format!("{server}/graphql"))
            .bearer_auth(token)
            .json(&serde_json::json!({"query": QUERY, "variables": {"id": id}}))
            .send()
            .await;
        let body: Value = match answer {
            Ok(answer) => answer.json().await.unwrap_or(Value::Null),
            Err(error) => {
                return format!(
                    "Nothing was kept: a failed request keeps nothing \
                     (the server could not be asked about upload {id}: {})",
                    chain(&error)
                )
            }
        };
        let upload = &body["data"]["upload"];
        let code = body["errors"][0]["extensions"]["code"].as_str();
        match (upload["status"].as_str(), code) {
            (Some("failed"), _) => {
                let reason = upload["error"].as_str().unwrap_or("no reason given");
                return format!(
                    "The server refused upload {id}: {reason}\n\
                     Nothing was kept: a failed request keeps nothing \
                     (upload {id} is recorded as `failed`, with no chunks)."
                );
            }
            (Some("complete"), _) => {
                let theirs = upload["sha256"].as_str().unwrap_or_default();
                if local.is_some_and(|local| local.sha256 == theirs) {
                    return format!(
                        "Upload {id} is complete on the server with this file's SHA-256 {theirs}, \
                         but this request's answer was lost; if the id was already taken \
                         by an earlier upload of this file, this request kept nothing."
                    );
                }
                return format!(
                    "Nothing was kept by this request: upload {id} on the server is an \
                     earlier, complete one (SHA-256 {theirs}); the id was already taken."
                );
            }
            (Some(_), _) => last = format!("upload {id} is still `receiving` on the server"),
            (None, Some("NOT_FOUND")) => {
                return format!(
                    "Nothing was kept: a failed request keeps nothing \
                     (the server has no upload {id})."
                )
            }
            (None, _) => {
                return format!(
                    "Nothing was kept: a failed request keeps nothing \
                     (asking the server about upload {id} gave {body})."
                )
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    format!(
        "Nothing was kept: a failed request keeps nothing ({last}; it will be \
         recorded as `failed`, with no chunks, once the server sees the request end)."
    )
}

/// A random (version 4) UUID, without a random-number crate: the SHA-256
/// of the time, the process and the file.
fn random_uuid(args: &Args) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hash = Sha256::new();
    hash.update(nanos.to_le_bytes());
    hash.update(std::process::id().to_le_bytes());
    hash.update(args.file.as_os_str().as_encoded_bytes());
    let mut bytes: [u8; 16] = hash.finalize()[..16].try_into().expect("16 bytes");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `id` is a UUID as the server takes it: lower-case hex, with dashes.
fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(at, c)| match at {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// An error with its causes, e.g. the file's read error under reqwest's.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
