//! The built-in registry: `installer registry serve` and `installer registry config`.
//!
//! `serve` answers the pull half of the OCI distribution API straight out of the installer file,
//! memory-mapped: images keep their original references (keyed by registry and repository, with
//! containerd's `?ns=`), nothing is imported or unpacked, and no byte leaves the process before
//! the chunk holding it has been checked against the signed index.
//!
//! * [`integrity`] owns the mapping and the per-chunk verification;
//! * [`store`] owns what can be served: images, repositories and blob reachability;
//! * [`routes`] owns the HTTP API: parsing, resolution, headers, errors;
//! * [`access_log`] owns response bodies and the one-line-per-request log;
//! * [`config`] owns the containerd files `registry config` writes;
//! * [`site_push`] owns `registry push`: the images copied into a site's own registry;
//! * [`pki`] owns the cluster's registry CA, pull credential and serving certificate (operator
//!   side), and [`tls`] the TLS and credential check both ends use;
//! * this module owns startup (trust checks, listener, runtime) and shutdown.

pub mod access_log;
pub mod config;
pub mod integrity;
pub mod pki;
pub mod routes;
pub mod site_push;
pub mod store;
pub mod tls;

use crate::cli::{RegistryConfigArgs, RegistryPkiArgs, RegistryServeArgs, TrustArgs};
use crate::printer::Printer;
use crate::protocol::access::PullAccess;
use crate::trust;
use crate::verify::open_payload;
use access_log::{LogEntry, ServeBody, note};
use config::ConfigError;
use ferry_core::image_ref::normalize_domain;
use ferry_core::metadata::MetadataError;
use ferry_core::trust::TrustError;
use ferry_core::verify::OpenError;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use integrity::{MapError, VerifiedFile};
use payload_format::{Payload, SignatureStatus, TrustPolicy};
use routes::Registry;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio_rustls::TlsAcceptor;

/// Connections served at once; more wait in the kernel's accept queue. Bounds memory: each
/// connection costs a task and hyper's buffers, never a copy of a blob.
const MAX_CONNECTIONS: usize = 1024;

/// Why `registry serve` or `registry config` stops.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A `--key` (or trusted-key directory) cannot be read.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The installer cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The installer's signature or program bytes do not check out.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
    /// The installer cannot be mapped for serving.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The bundle's metadata (images, manifests) does not read.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The registry's CA, credential or certificate cannot be made or read.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The serving certificate, key or credential digest of `--tls-dir` does not load.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// containerd's files cannot be made or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No sandbox image was given and the bundle's cannot be worked out.
    #[error("choosing containerd's sandbox image for bundle {name} {version}")]
    SandboxImage {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: String,
        /// Why.
        source: ConfigError,
    },
    /// The listening address cannot be bound.
    #[error("listening on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A step of setting up the listener or the runtime failed.
    #[error("{step}")]
    Setup {
        /// What was being done, e.g. `starting the async runtime`.
        step: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Maps an I/O failure of setup step `step` to [`RegistryError::Setup`].
fn setup(step: &'static str) -> impl FnOnce(std::io::Error) -> RegistryError {
    move |source| RegistryError::Setup { step, source }
}

/// Opens the installer and checks what `verify` checks except the full chunk scan: trailer,
/// index digest, signature against the trust policy, and the installer program's own bytes.
pub fn open_trusted(path: &Path, trust_args: &TrustArgs, printer: &Printer) -> Result<Payload, RegistryError> {
    let policy =
        TrustPolicy { trusted: trust::trusted_keys(&trust_args.keys)?, allow_unsigned: trust_args.allow_unsigned };
    let payload = open_payload(path)?;
    let shown = payload.path().display().to_string();
    match payload.check_signature(&policy)? {
        SignatureStatus::Trusted(k) => printer.out(format!("{shown}: signed by {} (trusted)", k.fingerprint())),
        SignatureStatus::ValidUnpinned(k) => {
            printer.out(format!("{shown}: signed by {}", k.fingerprint()));
            printer.warn(format!(
                "no trusted keys given: the signature is valid, but only `--key NAME.pub` (or {} / FERRY_TRUSTED_KEYS) proves it is the key you expect",
                trust::TRUSTED_KEYS_DIR
            ));
        }
        SignatureStatus::Unsigned => printer
            .warn(format!("{shown} is UNSIGNED: nothing proves who built it (accepted because of --allow-unsigned)")),
    }
    payload.verify_stub()?;
    Ok(payload)
}

/// Runs `registry serve` until SIGINT or SIGTERM.
pub fn serve(args: &RegistryServeArgs, printer: &Printer) -> Result<(), RegistryError> {
    let started = Instant::now();
    let (acceptor, credential) = match &args.tls_dir {
        Some(dir) => {
            let (config, check) = tls::load_tls_dir(dir)?;
            (Some(TlsAcceptor::from(config)), Some(check))
        }
        None => {
            printer.warn("serving plain HTTP with no credential (--insecure-plain-http): anyone who reaches the port can pull every image");
            (None, None)
        }
    };
    let payload = open_trusted(&args.file, &args.trust, printer)?;
    let shown = payload.path().display().to_string();
    let file = VerifiedFile::new(payload)?;
    let store = Store::build(&file)?;
    warn_about_contents(&file, &store, &shown, printer)?;
    let (listener, addr) = listen(args.listen)?;
    let (repos, tags, blobs) = store.summary();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    // Always printed (even with --quiet): scripts and tests read the port from this line.
    println!(
        "registry listening on {scheme}://{addr} ({repos} repositories, {tags} tags, {blobs} blobs from {shown}; ready in {:.0} ms)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let registry = Arc::new(Registry { file, store, credential });
    if !args.no_background_verify {
        spawn_background_verify(registry.clone());
    }
    let result = run_until_signal(listener, registry.clone(), acceptor, args.threads);
    note(&format!(
        "registry stopped: {} requests, {} of {} chunks verified",
        access_log::REQUESTS.load(std::sync::atomic::Ordering::Relaxed),
        registry.file.verified_chunks(),
        registry.file.payload().chunk_count()
    ));
    result
}

/// Runs `registry pki`: the CA and credential in `--dir` (made once), and a serving
/// certificate for `--name`s beside them, as `registry serve --tls-dir` reads it.
pub fn pki(args: &RegistryPkiArgs, printer: &Printer) -> Result<(), RegistryError> {
    let ca = pki::load_or_create(&args.dir)?;
    pki::write_tls_dir(&args.dir, &ca.serving(&args.names)?)?;
    let d = args.dir.display();
    printer.out(format!(
        "{d}: CA {ca_cert}, credential {cred} (user:password, 0600); serve with --tls-dir {d}, \
         configure nodes with --ca-file {d}/{ca_cert} --credential-file {d}/{cred}",
        ca_cert = pki::CA_CERT,
        cred = pki::CREDENTIAL
    ));
    Ok(())
}

/// Warns, before serving, about what the store could not take in and what pulls will miss.
fn warn_about_contents(
    file: &VerifiedFile,
    store: &Store,
    shown: &str,
    printer: &Printer,
) -> Result<(), RegistryError> {
    for w in &store.warnings {
        printer.warn(w);
    }
    for image in crate::verify::missing_images(file.payload())? {
        printer
            .warn(format!("the bundle lacks image {image} (built with --allow-missing-images); pulls of it will fail"));
    }
    if store.repos.is_empty() {
        printer.warn(format!("{shown} carries no images; the registry will answer 404 to every pull"));
    }
    Ok(())
}

/// Binds `addr` and returns the listener, ready for the async runtime, with its real address.
fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RegistryError> {
    let listener = TcpListener::bind(addr).map_err(|source| RegistryError::Listen { addr, source })?;
    listener.set_nonblocking(true).map_err(setup("setting the listening socket non-blocking"))?;
    let addr = listener.local_addr().map_err(setup("reading the listening address"))?;
    Ok((listener, addr))
}

/// Serves on a multi-threaded runtime (`threads` workers, else one per core) until a signal.
fn run_until_signal(
    listener: TcpListener,
    registry: Arc<Registry>,
    acceptor: Option<TlsAcceptor>,
    threads: Option<usize>,
) -> Result<(), RegistryError> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("registry");
    // Chunk hashing runs on blocking threads; cap them (each only reads the mapping).
    rt.max_blocking_threads(64);
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().map_err(setup("starting the async runtime"))?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(setup("registering the listener"))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(setup("installing the SIGTERM handler"))?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        serve_on(listener, registry, acceptor, stop).await;
        Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Verifies every chunk holding an image blob on a low-priority thread (see [`integrity`]).
fn spawn_background_verify(registry: Arc<Registry>) {
    let mut chunks: Vec<u64> = registry
        .store
        .blobs
        .iter()
        .filter(|b| b.size > 0)
        .flat_map(|b| registry.file.chunk_span(b.offset, b.offset + b.size))
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    let spawned = std::thread::Builder::new().name("registry-verify".into()).spawn(move || {
        // Lowest priority: serving always comes first. Per-thread nice is Linux behaviour.
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
        let started = Instant::now();
        let (good, bad) = registry.file.verify_in_background(&chunks, |c| {
            note(&format!("error: background check: {c}; requests for blobs in it are checked blob by blob and damaged ones refused"));
        });
        let mib = ((good + bad) * registry.file.payload().index().chunk_size as u64) >> 20;
        note(&format!(
            "background check: {good} chunks ok, {bad} damaged ({mib} MiB hashed in {:.1} s; the rest were already checked by requests)",
            started.elapsed().as_secs_f64()
        ));
    });
    if let Err(e) = spawned {
        note(&format!("background check not started ({e}); chunks are verified when first requested"));
    }
}

/// Accepts connections on `listener` until `stop` completes, each served over TLS when
/// `acceptor` is given (a client that does not complete a handshake gets no HTTP at all).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    acceptor: Option<TlsAcceptor>,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut stop => return,
        };
        let (stream, client) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    note(&format!("error: accepting a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        // Only latency is at stake: a socket that keeps Nagle still serves every byte.
        let _ = stream.set_nodelay(true);
        let (registry, acceptor) = (registry.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(TokioIo::new(stream), registry, client).await,
                // The same bound as for headers: a silent client does not hold a slot forever.
                Some(a) => match tokio::time::timeout(HEADER_TIMEOUT, a.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), registry, client).await,
                    Ok(Err(e)) => note(&format!("connection from {client}: TLS handshake failed: {e}")),
                    Err(_) => note(&format!("connection from {client}: no TLS handshake within {HEADER_TIMEOUT:?}")),
                },
            }
            drop(permit);
        });
    }
}

/// How long a client may take to send its request headers (or its TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1 requests on one connection until it closes.
async fn serve_connection<I>(io: I, registry: Arc<Registry>, client: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| respond(registry.clone(), client, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    if let Err(e) = conn.await
        && !e.is_incomplete_message()
    {
        note(&format!("connection from {client}: {e}"));
    }
}

async fn respond(
    registry: Arc<Registry>,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ServeBody>, Infallible> {
    let started = Instant::now();
    let (parts, _body) = req.into_parts();
    let target =
        parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| parts.uri.path().to_string());
    let user_agent =
        parts.headers.get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let r = routes::Req {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let resp = routes::handle(registry, r).await;
    let entry = LogEntry {
        client,
        method: parts.method.to_string(),
        target,
        status: resp.status().as_u16(),
        user_agent,
        started,
    };
    Ok(resp.map(|body| body.with_log(entry)))
}

/// Runs `registry config`.
pub fn config(args: &RegistryConfigArgs, printer: &Printer) -> Result<(), RegistryError> {
    let access = match (&args.ca_file, &args.credential_file) {
        (Some(ca), Some(credential)) => Some(config::read_access(ca, credential)?),
        _ => None,
    };
    config_with(args, access, printer)
}

/// `registry config` with the cluster's CA and credential given directly (the prepare agent has
/// them from its plan, not from files).
pub fn config_with(
    args: &RegistryConfigArgs,
    access: Option<PullAccess>,
    printer: &Printer,
) -> Result<(), RegistryError> {
    let payload = open_trusted(&args.file, &args.trust, printer)?;
    let meta = &payload.index().metadata;
    let endpoints = args.endpoints.iter().map(|e| config::check_endpoint(e)).collect::<Result<Vec<_>, _>>()?;
    let images = ferry_core::metadata::images(&meta.extra)?;
    let registries = images.iter().map(|i| normalize_domain(&i.registry)).collect();
    let sandbox_image = sandbox_image(args, meta)?;
    if !images.iter().any(|i| i.reference == sandbox_image) {
        printer.warn(format!(
            "the bundle does not carry {sandbox_image}, the sandbox image containerd will pull for every pod; add it to spec.images"
        ));
    }
    let inputs = config::Inputs {
        restrict_oom_score_adj: restrict_oom_score_adj(args.restrict_oom_score_adj, printer),
        endpoints,
        registries,
        containerd: args.containerd,
        config_path: args.config_path.clone(),
        sandbox_image,
        bundle: format!("{} {} (Kubernetes {})", meta.name, meta.version, meta.kubernetes_version),
        access,
    };
    for file in config::render(&inputs)? {
        let path = args.out.join(&file.path);
        config::write_atomic_mode(&path, file.text.as_bytes(), file.mode)?;
        printer.out(format!("wrote {}", path.display()));
    }
    Ok(())
}

/// `--sandbox-image`, else the pause image the bundle records or its Kubernetes version implies.
fn sandbox_image(args: &RegistryConfigArgs, meta: &payload_format::BundleMetadata) -> Result<String, RegistryError> {
    match &args.sandbox_image {
        Some(s) => Ok(s.clone()),
        None => config::bundle_pause_image(meta).map_err(|source| RegistryError::SandboxImage {
            name: meta.name.clone(),
            version: meta.version.clone(),
            source,
        }),
    }
}

/// Whether containerd is to keep containers' OOM scores at or above its own; warns when it is.
fn restrict_oom_score_adj(choice: config::OomRestriction, printer: &Printer) -> bool {
    let restrict = match choice {
        config::OomRestriction::Yes => true,
        config::OomRestriction::No => false,
        config::OomRestriction::Auto => !config::host_can_lower_oom_scores(),
    };
    if restrict {
        printer.warn(
            "containerd will keep containers' OOM scores at or above its own (restrict_oom_score_adj): \
             root here cannot lower OOM scores (no CAP_SYS_RESOURCE), so pods lose the kubelet's OOM protection",
        );
    }
    restrict
}

#[cfg(test)]
mod tests;
