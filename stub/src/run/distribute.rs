//! Distribution, operator side: which chunks each host needs, and streaming them into
//! `agent receive` on the host (the stream and its answers are `protocol::receive`).

use crate::cluster::{Host, Role};
use crate::protocol::access::RelayIdentity;
use crate::protocol::receive::{END, Event, Header, Opening, Outcome, Received};
use crate::protocol::relay::Secret;
use anyhow::{Context, Result, bail};
use payload_format::Payload;
use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The operator's own copy failed its check against the signed index while being read for
/// sending: the chunk was not sent, and no host can be given a good one.
#[derive(Debug, thiserror::Error)]
#[error(
    "this installer is damaged: {0}. Nothing of that chunk was sent; run `./installer verify` to list the damage, and use an intact copy"
)]
pub struct DamagedSource(payload_format::Error);

/// Entry prefixes every node gets; the registry host gets every chunk.
pub const NODE_PREFIXES: &[&str] = &["rootfs/", "bundle/", "files/"];

/// The chunks `host` must hold, in order.
pub fn wanted_chunks(payload: &Payload, host: &Host) -> Vec<u64> {
    if host.is(Role::Registry) {
        return (0..payload.chunk_count()).collect();
    }
    let mut set = BTreeSet::new();
    for e in &payload.index().entries {
        if e.stored_len == 0 || !NODE_PREFIXES.iter().any(|p| e.path.starts_with(p)) {
            continue;
        }
        let first = payload.chunk_of(e.offset);
        let last = payload.chunk_of(e.offset + e.stored_len - 1);
        set.extend(first..=last);
    }
    set.into_iter().collect()
}

/// Bytes of the given chunks.
pub fn chunk_bytes(payload: &Payload, chunks: &[u64]) -> u64 {
    chunks.iter().map(|&n| payload.chunk_range(n)).map(|(s, e)| e - s).sum()
}

/// Chunks read and checked ahead of the SSH writes, per host.
const READ_AHEAD: usize = 4;

/// Which chunks of the operator's copy this process has read and found matching the index,
/// shared by every host's stream, so a chunk sent to N hosts is hashed here once, not N times
/// (each host still checks every chunk it lands). Keyed by the file's identity and modification time.
fn checked_chunks(payload: &Payload) -> Result<Arc<Vec<AtomicBool>>> {
    type Key = (u64, u64, u64, i64, i64);
    static CHECKED: Mutex<Option<(Key, Arc<Vec<AtomicBool>>)>> = Mutex::new(None);
    let m = payload.file().metadata().context("reading the installer")?;
    let id = (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec());
    // The cache is a hint: a poisoned one is as good as any.
    let mut slot = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    match &*slot {
        Some((k, v)) if *k == id => Ok(v.clone()),
        _ => {
            let v: Arc<Vec<AtomicBool>> =
                Arc::new((0..payload.chunk_count()).map(|_| AtomicBool::new(false)).collect());
            *slot = Some((id, v.clone()));
            Ok(v)
        }
    }
}

/// The session header: the installer's tail (index, signature, trailer), the chunks wanted, and
/// the relay secret (and the listener's TLS identity) when the host is to listen for downstream
/// hosts.
pub fn header(
    payload: &Payload,
    want: &[u64],
    secret: Option<&Secret>,
    identity: Option<&RelayIdentity>,
) -> Result<Vec<u8>> {
    let t = payload.trailer();
    let file_len = payload.file_len();
    let mut tail = vec![0u8; (file_len - t.index_offset) as usize];
    payload.file().read_exact_at(&mut tail, t.index_offset).context("reading the index")?;
    Ok(Header { file_len, tail, want: want.to_vec(), secret: secret.copied(), identity: identity.cloned() }.encode())
}

/// The agent's first answer.
#[derive(Debug)]
pub struct Answer {
    /// Chunks it lacks.
    pub missing: Vec<u64>,
    /// Its relay listener's port, when it listens.
    pub relay_port: Option<u16>,
}

/// One line from the agent; a closed stream is an error that says so.
async fn read_raw_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line).await.context("reading from the agent")?;
    if line.is_empty() {
        bail!("the connection closed before the agent answered (host unreachable, or the agent could not start)");
    }
    Ok(line)
}

/// One answer line from the agent while it receives.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Event> {
    Ok(Event::decode(read_raw_line(r).await?.as_bytes())?)
}

/// Reads the agent's first answer and checks it asks only for chunks that were offered.
pub async fn read_answer<R: AsyncBufRead + Unpin>(r: &mut R, want: &[u64]) -> Result<Answer> {
    let offer = match Opening::decode(read_raw_line(r).await?.as_bytes())? {
        Opening::Offer(offer) => offer,
        Opening::Refused(Outcome::Failed(why)) => bail!("the agent refused: {why}"),
        Opening::Refused(Outcome::Done(_)) => bail!("the agent finished before it was sent anything"),
    };
    let wanted: BTreeSet<u64> = want.iter().copied().collect();
    if let Some(n) = offer.missing.iter().find(|n| !wanted.contains(n)) {
        bail!("the agent asked for chunk {n}, which was not offered");
    }
    Ok(Answer { missing: offer.missing, relay_port: offer.relay.map(|r| r.port) })
}

/// Checks the agent's final line: what it received.
pub fn check_final(done: Event) -> Result<Received> {
    match done {
        Event::Finished(Outcome::Done(got)) => Ok(got),
        Event::Finished(Outcome::Failed(why)) => bail!("the agent failed: {why}"),
        Event::Progress { .. } | Event::Lost { .. } => {
            bail!("the agent was still receiving when it should have finished")
        }
    }
}

/// Sends the chunks over the agent's stdin (`w`), reading its answers from `r`, with no relay.
/// `progress` gets bytes as they go. Returns the bytes of chunk data sent, and what the agent
/// says it received. `host` names the agent in messages.
pub async fn send<R, W>(
    payload: &Payload,
    want: &[u64],
    host: &str,
    r: &mut R,
    w: &mut W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, Received)>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    crate::ssh::agent::read_hello(r, host).await?;
    w.write_all(&header(payload, want, None, None)?).await?;
    w.flush().await?;
    let answer = read_answer(r, want).await?;
    let sent = stream_chunks(payload, &answer.missing, w, progress).await?;
    w.write_all(&END.to_le_bytes()).await?;
    w.flush().await?;
    let got = check_final(read_line(r).await.context("waiting for the agent to finish")?)?;
    let _ = w.shutdown().await;
    Ok((sent, got))
}

/// Streams `chunks` of the operator's copy as frames on `w` (no END). Returns the bytes sent.
pub async fn stream_chunks<W: AsyncWrite + Unpin>(
    payload: &Payload,
    chunks: &[u64],
    w: &mut W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    // Reading and checking run on their own thread, a few chunks ahead of the SSH writes, so
    // the disk, the hash and the cipher overlap instead of taking turns on the runtime's threads.
    let checked = checked_chunks(payload)?;
    let jobs: Vec<(u64, u64, u64, [u8; 32])> = chunks
        .iter()
        .map(|&n| {
            let (s, e) = payload.chunk_range(n);
            (n, s, e, payload.index().chunks[n as usize])
        })
        .collect();
    let file = payload.file().try_clone().context("reading the installer")?;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<std::result::Result<Vec<u8>, (u64, Option<std::io::Error>)>>(READ_AHEAD);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::Builder::new().name("send-read".into()).spawn(move || {
        for (n, s, e, digest) in jobs {
            let len = (e - s) as usize;
            let mut buf = back_rx.try_recv().unwrap_or_default();
            buf.resize(8 + len, 0);
            buf[..8].copy_from_slice(&n.to_le_bytes());
            let seen = &checked[n as usize];
            let item = match file.read_exact_at(&mut buf[8..], s) {
                Err(err) => Err((n, Some(err))),
                // The operator's copy was verified at start; a disk error since then must not
                // travel. Checked once per run: the host streams of a run share the result.
                Ok(()) if seen.load(Ordering::Relaxed) => Ok(buf),
                Ok(()) if payload_format::sha256(&buf[8..]) != digest => Err((n, None)),
                Ok(()) => {
                    seen.store(true, Ordering::Relaxed);
                    Ok(buf)
                }
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    })?;
    let mut sent = 0;
    let result: Result<()> = async {
        while let Some(item) = rx.recv().await {
            let buf = match item {
                Ok(buf) => buf,
                Err((_, Some(err))) => return Err(anyhow::Error::from(err).context("reading the installer")),
                Err((n, None)) => return Err(DamagedSource(payload.chunk_error(n)).into()),
            };
            w.write_all(&buf).await.context("sending (connection lost?)")?;
            let len = (buf.len() - 8) as u64;
            sent += len;
            progress(len);
            let _ = back_tx.send(buf);
        }
        Ok(())
    }
    .await;
    drop(rx);
    drop(back_tx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    result?;
    Ok(sent)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::receive::{ReceiveOptions, receive};
    use crate::protocol::receive::MAGIC;
    use crate::ssh::RemoteHost;
    use payload_format::{BundleMetadata, Compression, PayloadWriter, WriterOptions};
    use std::path::Path;

    fn build(dir: &Path) -> std::path::PathBuf {
        build_sized(dir, 40_000, 160_000)
    }

    /// A test installer in `dir` (with its pretend program as `dir/stub`, 4 KiB chunks): a
    /// rootfs file of `tool_words` little-endian u32s and an image blob of its first `blob_bytes`.
    pub(crate) fn build_sized(dir: &Path, tool_words: u32, blob_bytes: usize) -> std::path::PathBuf {
        let stub_bytes = b"\x7fELF pretend stub".to_vec();
        std::fs::write(dir.join("stub"), &stub_bytes).unwrap();
        let path = dir.join("installer");
        let f = std::fs::File::create(&path).unwrap();
        let opts = WriterOptions { chunk_size: 4096, ..Default::default() };
        let mut w = PayloadWriter::new(f, &path, &mut &stub_bytes[..], opts).unwrap();
        let big: Vec<u8> = (0..tool_words).flat_map(|i| i.to_le_bytes()).collect();
        w.add_file("rootfs/usr/bin/tool", 0o755, Compression::Raw, &mut &big[..]).unwrap();
        w.add_file("blobs/sha256/aa", 0o644, Compression::Raw, &mut &big[..blob_bytes]).unwrap();
        w.finish(BundleMetadata { name: "t".into(), version: "1".into(), ..Default::default() }, None).unwrap();
        path
    }

    /// Receiving options for a test host whose copy goes to `dir/node/installer`, with the
    /// pretend program of [`build_sized`]; unsigned installers accepted.
    pub(crate) fn node_receiving(dir: &Path) -> ReceiveOptions {
        ReceiveOptions {
            dest: dir.join("node/installer"),
            signer: None,
            allow_unsigned: true,
            stub: dir.join("stub"),
            relay_listen: None,
        }
    }

    async fn session(payload: &Payload, want: &[u64], opts: &ReceiveOptions) -> Result<(u64, Received)> {
        // The agent as `installer agent receive` runs it: hello first, then the stream.
        let dir = opts.dest.parent().unwrap().to_path_buf();
        let mut agent = crate::agent::local::LocalAgent::new("node", dir, opts.stub.clone());
        agent.dest = opts.dest.clone();
        let call = crate::protocol::Call::Receive {
            dest: opts.dest.clone(),
            signer: opts.signer.clone(),
            allow_unsigned: opts.allow_unsigned,
            relay_listen: None,
        };
        let exec = agent.call("agent", &call).await?;
        let crate::ssh::Exec { mut stdin, stdout, finished } = exec;
        let mut rh = tokio::io::BufReader::new(stdout);
        let sent = send(payload, want, "node", &mut rh, &mut stdin, &|_| {}).await;
        drop(stdin);
        let (status, stderr) = finished.await.unwrap();
        let (sent, got) = sent?;
        assert_eq!(status, 0, "{}", String::from_utf8_lossy(&stderr));
        Ok((sent, got))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sends_once_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = build(dir.path());
        let payload = Payload::open(&path).unwrap();
        let node = Host {
            ip: "n".into(),
            roles: [Role::Worker].into(),
            ssh: crate::cluster::SshTarget { user: "root".into(), port: 22, key: None, sudo: false },
            labels: Default::default(),
        };
        let want = wanted_chunks(&payload, &node);
        assert!(!want.is_empty() && (want.len() as u64) < payload.chunk_count());
        let opts = node_receiving(dir.path());
        // Simulate an interrupted earlier run: a .part holding half the chunks.
        let (sent1, got1) = session(&payload, &want[..want.len() / 2], &opts).await.unwrap();
        assert_eq!(got1.chunks as usize, want.len() / 2);
        assert_eq!(sent1, chunk_bytes(&payload, &want[..want.len() / 2]));
        let (sent2, got2) = session(&payload, &want, &opts).await.unwrap();
        assert_eq!(got2.had as usize, want.len() / 2, "the first half is not sent again");
        assert_eq!(sent1 + sent2, chunk_bytes(&payload, &want), "one copy in total");
        // The result reads as an installer and its rootfs extracts, verified.
        let copy = Payload::open(&opts.dest).unwrap();
        copy.verify_stub().unwrap();
        let e = copy.index().entries.iter().find(|e| e.path == "rootfs/usr/bin/tool").unwrap();
        copy.read_verified(e.offset, e.offset + e.stored_len).unwrap();
        // A third run sends nothing and leaves the file alone.
        let before = std::fs::metadata(&opts.dest).unwrap().modified().unwrap();
        let (sent3, got3) = session(&payload, &want, &opts).await.unwrap();
        assert_eq!((sent3, got3.chunks), (0, 0));
        assert_eq!(std::fs::metadata(&opts.dest).unwrap().modified().unwrap(), before);
        // Becoming a registry host adds only the rest.
        let all: Vec<u64> = (0..payload.chunk_count()).collect();
        let (sent4, _) = session(&payload, &all, &opts).await.unwrap();
        assert_eq!(sent4, chunk_bytes(&payload, &all) - chunk_bytes(&payload, &want));
    }

    /// A host holding release 1 is sent only what release 2 changed: the entries they share are
    /// copied from the file it holds, and every copied chunk is checked like a sent one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_new_release_is_sent_only_what_the_held_one_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let first = Payload::open(&build(dir.path())).unwrap();
        let all_of = |p: &Payload| -> Vec<u64> { (0..p.chunk_count()).collect() };
        let opts = node_receiving(dir.path());
        session(&first, &all_of(&first), &opts).await.unwrap();

        // Release 2: the same tool and blob (at other offsets), a changed launch file and a new blob.
        let two = dir.path().join("two");
        std::fs::create_dir(&two).unwrap();
        let path = two.join("installer");
        let stub_bytes = std::fs::read(dir.path().join("stub")).unwrap();
        let f = std::fs::File::create(&path).unwrap();
        let mut w = PayloadWriter::new(
            f,
            &path,
            &mut &stub_bytes[..],
            WriterOptions { chunk_size: 4096, ..Default::default() },
        )
        .unwrap();
        let big: Vec<u8> = (0..40_000u32).flat_map(|i| i.to_le_bytes()).collect();
        w.add_file("bundle/launch.yaml", 0o644, Compression::Raw, &mut &b"steps: [release 2]\n"[..]).unwrap();
        w.add_file("rootfs/usr/bin/tool", 0o755, Compression::Raw, &mut &big[..]).unwrap();
        w.add_file("blobs/sha256/aa", 0o644, Compression::Raw, &mut &big[..160_000]).unwrap();
        let fresh: Vec<u8> = (0..10_000u32).flat_map(|i| (i ^ 0x5a5a).to_be_bytes()).collect();
        w.add_file("blobs/sha256/bb", 0o644, Compression::Raw, &mut &fresh[..]).unwrap();
        w.finish(BundleMetadata { name: "t".into(), version: "2".into(), ..Default::default() }, None).unwrap();
        let second = Payload::open(&path).unwrap();

        let (sent, got) = session(&second, &all_of(&second), &opts).await.unwrap();
        let changed: u64 = ["bundle/launch.yaml", "blobs/sha256/bb"]
            .iter()
            .map(|p| second.index().entries.iter().find(|e| &e.path == p).unwrap())
            .map(|e| {
                chunk_bytes(
                    &second,
                    &(second.chunk_of(e.offset)..=second.chunk_of(e.offset + e.stored_len - 1)).collect::<Vec<_>>(),
                )
            })
            .sum();
        assert!(got.had > 0, "{got:?}");
        // The changed entries' chunks, and the program and index's chunks that differ, not the shared 320 kB.
        assert!(sent <= changed + 3 * 4096, "sent {sent} for {changed} bytes of changed chunks");
        assert!(sent < chunk_bytes(&second, &all_of(&second)) / 4, "sent {sent}");
        assert_eq!(std::fs::read(&opts.dest).unwrap(), std::fs::read(&path).unwrap());
    }

    /// A chunk altered on the way is refused by the receiver, which writes nothing of it and
    /// finishes nothing; the good chunks before it are kept for the next run.
    #[test]
    fn chunks_damaged_in_transit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = build(dir.path());
        let payload = Payload::open(&path).unwrap();
        let opts = ReceiveOptions {
            dest: dir.path().join("n/i"),
            allow_unsigned: true,
            stub: dir.path().join("stub"),
            signer: None,
            relay_listen: None,
        };
        let t = payload.trailer();
        let tail = std::fs::read(&path).unwrap()[t.index_offset as usize..].to_vec();
        let want = [0u64, 1, 2];
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&payload.file_len().to_le_bytes());
        stream.extend_from_slice(&(tail.len() as u64).to_le_bytes());
        stream.extend_from_slice(&tail);
        stream.extend_from_slice(&(want.len() as u64).to_le_bytes());
        for n in want {
            stream.extend_from_slice(&n.to_le_bytes());
        }
        // No relay secret, no relay identity.
        stream.extend_from_slice(&0u64.to_le_bytes());
        stream.extend_from_slice(&0u64.to_le_bytes());
        for n in want {
            let (s, e) = payload.chunk_range(n);
            let mut c = vec![0u8; (e - s) as usize];
            payload.file().read_exact_at(&mut c, s).unwrap();
            if n == 1 {
                c[7] ^= 1;
            }
            stream.extend_from_slice(&n.to_le_bytes());
            stream.extend_from_slice(&c);
        }
        stream.extend_from_slice(&END.to_le_bytes());
        let mut out = Vec::new();
        // As the agent reports it: the whole chain, which names the chunk below the top line.
        let err = anyhow::Error::from(receive(&mut &stream[..], &mut out, &opts).unwrap_err());
        assert!(format!("{err:#}").contains("chunk 1"), "{err:#}");
        assert!(String::from_utf8_lossy(&out).contains("\"ok\":false"));
        assert!(!opts.dest.exists());
        // Chunk 1 never landed; chunk 0 did and is not asked for again.
        let part = dir.path().join("n/i.part");
        let copy = Payload::open(&part).unwrap();
        let (s, e) = copy.chunk_range(1);
        let mut c = vec![0u8; (e - s) as usize];
        copy.file().read_exact_at(&mut c, s).unwrap();
        assert!(!copy.chunk_matches(1, &c));
        let (s, e) = copy.chunk_range(0);
        let mut c = vec![0u8; (e - s) as usize];
        copy.file().read_exact_at(&mut c, s).unwrap();
        assert!(copy.chunk_matches(0, &c));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn damaged_chunks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = build(dir.path());
        let payload = Payload::open(&path).unwrap();
        let opts = ReceiveOptions {
            dest: dir.path().join("n/i"),
            allow_unsigned: true,
            stub: dir.path().join("stub"),
            signer: None,
            relay_listen: None,
        };
        // An unsigned installer is refused unless allowed.
        let strict = ReceiveOptions { allow_unsigned: false, ..opts.clone() };
        assert!(session(&payload, &[0], &strict).await.is_err());
        // Corrupt the local copy after opening: the sender itself refuses to send it.
        let (s, _) = payload.chunk_range(1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"XXXX", s).unwrap();
        let err = session(&payload, &[0, 1], &opts).await.unwrap_err();
        assert!(format!("{err:#}").contains("chunk 1"), "{err:#}");
        assert!(!opts.dest.exists());
    }
}
